"""``zimg up --demo``: the README's first command, on a machine with no Redis running."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _can_unshare() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -n` (root) for a network with nothing listening")
def test_up_demo_starts_a_private_redis_when_none_answers(tmp_path: Path):
    # A fresh network namespace: nothing listens on 127.0.0.1:6379 there, as on a user's fresh machine.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
    env["ZIMG_DATA_DIR"] = str(tmp_path / "data")
    script = f"ip link set lo up && exec {sys.executable} -m zimg_queue.cli up --demo"
    done = subprocess.run(
        ["unshare", "-n", "bash", "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    redis_url = re.search(r"redis: (redis://\S+)", done.stdout).group(1)
    assert not redis_url.endswith(":6379/0")  # a private server on a free port
    assert (tmp_path / "data" / "redis" / "appendonlydir").is_dir()  # with AOF on
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.parent == (tmp_path / "data" / "images").resolve()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (512, 512)
