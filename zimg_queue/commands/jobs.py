"""``zimg generate``, ``zimg status``, ``zimg cancel``: one job from a shell, over Redis or ``--api``.

Output is for a person by default (the image path, a few aligned lines) and JSON with
``--json`` (for scripts). ``generate --wait`` draws the job's stage and step on stderr
while it waits, only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from typing import Any

from .common import is_terminal, producer_for

FINAL = ("finished", "failed", "canceled", "stopped")
POLL_S = 0.2


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    given = {
        "width": args.width,
        "height": args.height,
        "seed": args.seed,
        "output_format": args.format,
        "negative_prompt": args.negative_prompt,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,  # the schema explains why it must be 0.0
    }
    return {k: v for k, v in given.items() if v is not None}


def cmd_generate(args: argparse.Namespace) -> int:
    client = producer_for(args)
    job_id = client.enqueue(args.prompt, priority=args.priority, job_id=args.id, **_fields(args))
    if not args.wait:
        print(json.dumps({"id": job_id}) if args.json else job_id)
        return 0
    status = wait_with_progress(client, job_id, args.timeout)
    if status["status"] == "finished" and args.output:
        if getattr(args, "api", None):
            client.download(job_id, args.output)  # the path in the result is on the server
        else:
            shutil.copyfile(status["result"]["path"], args.output)
        status = {**status, "output": args.output}
    if args.json:
        print(json.dumps(status, indent=2))
        return 0 if status["status"] == "finished" else 1
    return print_final(status, args.timeout)


def print_final(status: dict[str, Any], timeout: float | None = None) -> int:
    """The image path on stdout (exit 0), or one line saying what happened and what to do (exit 1)."""
    if status["status"] == "finished":
        print(status.get("output") or status["result"]["path"])
        return 0
    job_id, state = status["id"], status["status"]
    if state in FINAL:
        print(f"job {job_id} is {state}: {status.get('error') or 'no error recorded'}", file=sys.stderr)
    else:
        waited = f" after {timeout:g} s" if timeout is not None else ""
        print(f"job {job_id} is still {state}{waited}; `zimg status {job_id}` shows it later", file=sys.stderr)
    return 1


def progress_line(status: dict[str, Any]) -> str:
    """``started  inference 45%  step 3/8`` from a status's ``progress``."""
    progress = status.get("progress") or {}
    parts = [status["status"]]
    if progress.get("stage"):
        parts.append(f"{progress['stage']} {progress.get('percent', 0)}%")
    if progress.get("steps"):
        parts.append(f"step {progress.get('step')}/{progress['steps']}")
    if status.get("position") is not None and status["status"] == "queued":
        parts.append(f"position {status['position']}")
    return "  ".join(parts)


def wait_with_progress(client: Any, job_id: str, timeout: float) -> dict[str, Any]:
    """Wait until the job is final or ``timeout``; on a terminal, redraw its stage and step as they change."""
    if not is_terminal():
        return client.wait(job_id, timeout=timeout)
    deadline = time.monotonic() + timeout
    shown = ""
    try:
        while True:
            status = client.status(job_id)
            line = progress_line(status)
            if line != shown:
                sys.stderr.write(f"\r\033[K{job_id}: {line}")
                sys.stderr.flush()
                shown = line
            if status["status"] in FINAL or time.monotonic() >= deadline:
                return status
            time.sleep(POLL_S)
    finally:
        sys.stderr.write("\n")


def describe(status: dict[str, Any]) -> str:
    """A status as a few aligned lines for a person (``--json`` gives all of it)."""
    result = status.get("result") or {}
    progress = status.get("progress") or {}
    rows = [
        ("id", status["id"]),
        ("status", status["status"]),
        ("progress", f"{progress.get('stage', '-')} {progress.get('percent', 0)}%"),
    ]
    if status.get("position") is not None:
        rows.append(("position", str(status["position"])))
    if result.get("path") or result.get("url"):
        rows.append(("image", str(result.get("path") or result.get("url"))))
    if status.get("error"):
        rows.append(("error", str(status["error"])))
    return "\n".join(f"{name:<9} {value}" for name, value in rows)


def cmd_status(args: argparse.Namespace) -> int:
    status = producer_for(args).status(args.id)
    print(json.dumps(status, indent=2) if args.json else describe(status))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    status = producer_for(args).cancel(args.id)
    print(json.dumps(status, indent=2) if args.json else f"job {status['id']} is {status['status']}")
    return 0
