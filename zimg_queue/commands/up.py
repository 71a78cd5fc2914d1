"""``zimg up``'s first-run pieces: a port check that says what to do, and the demo's closing summary."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any


class PortInUse(OSError):
    """A port ``zimg up`` needs is taken. ``str()`` is one line naming the port and the flag that moves it."""


def check_port(port: int, flag: str, what: str, host: str = "127.0.0.1") -> None:
    """Raise :class:`PortInUse` when ``host:port`` cannot be bound (checked before any process starts)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            raise PortInUse(
                f"port {port} ({what}) is already in use, perhaps by another `zimg up`: "
                f"stop that, or choose another port with `{flag} N`"
            ) from None


NEXT_STEPS = (
    ("source .venv/bin/activate", "put `zimg` on PATH in this shell (from the clone's folder)"),
    ("zimg up", "keep the stack running; Ctrl-C stops it"),
    ('zimg generate "a red fox at dawn" --wait', "in a second shell: prints the new image's path"),
)


def demo_summary(status: dict[str, Any], out: Any = None) -> int:
    """The demo's last words: what was made, how to look at it, the next three commands; the image path last.

    No URLs: the demo's servers stop when it ends, so a URL printed here would not answer.
    """
    out = out or sys.stdout
    if status["status"] != "finished":
        print(f"demo job {status['id']} is {status['status']}: {status.get('error') or 'no error recorded'}", file=out)
        return 1
    result = status["result"]
    path = Path(result["path"])
    backend = result.get("backend")
    made = f"from the {backend} backend" if backend else "found in the image store (the same request ran before)"
    lines = [
        "",
        f"Done: a {result['width']}x{result['height']} {result['format'].upper()} {made}"
        + (" (the declared simulator, not the model)" if backend == "sim" else "")
        + f", in {result.get('total_s', 0):.2f} s.",
        "Look at it in any image viewer: `xdg-open IMAGE` (Linux) or `open IMAGE` (macOS), IMAGE being the last line.",
        "Next:",
        *(f"  {cmd:<44} # {why}" for cmd, why in NEXT_STEPS),
        "Image:",
        str(path),
    ]
    print("\n".join(lines), file=out, flush=True)
    return 0
