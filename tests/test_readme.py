"""The README is executable: every fenced ``bash``/``sh``/``python``/``toml`` block runs exactly as written.

One private Redis and one ``sim`` stack (inference server + workers) serve every block. Blocks run
in README order, each as its own process, in a scratch folder that links to the clone's top-level
entries (so ``examples/...`` and ``scripts/...`` resolve, and files a block writes stay out of the
clone), with the environment a reader has after following the README's first steps:

- ``ZIMG_REDIS_URL`` and ``ZIMG_INFERENCE_URL`` name the test's stack (a reader's are set by
  ``zimg up`` or by them; the test must never touch a Redis it did not start);
- ``.venv/bin`` first on ``PATH``, as ``source .venv/bin/activate`` (the README's first block) does;
- ``XDG_DATA_HOME`` in the scratch folder, so the default data folder is the shipped one, not this
  machine user's;
- ``PORT`` a free port, for blocks that start a server.

The text of a block is never rewritten. The README marks, in an HTML comment on the line before a
fence, the few blocks that cannot run here and why (``<!-- readme-test: skip (needs a GPU) -->``),
and blocks that start a server that keeps running (``<!-- readme-test: background URL -->``: started,
must answer ``URL`` with 200, then stopped). Two commands of the first block stand for more than a
test can run: ``scripts/demo`` runs its stack part (``zimg up --demo``; its setup part,
``scripts/setup``, has its own test in ``tests/test_stack.py``) and ``scripts/test`` is skipped (it
runs this suite). See :data:`STANDINS`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from zimg_queue.processes import stop_processes, wait_http
from zimg_queue.redis_server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LANGUAGES = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "toml": "toml"}
MARKER_RE = re.compile(r"<!--\s*readme-test:\s*(skip|background)\s*(.*?)\s*-->")
BLOCK_TIMEOUT_S = 180
#: The virtual environment's ``bin``: the clone's ``.venv`` (what ``source .venv/bin/activate`` puts on PATH), else
#: the one running the tests.
BIN = ROOT / ".venv" / "bin" if (ROOT / ".venv" / "bin" / "zimg").exists() else Path(sys.executable).parent
#: Commands of the first block that a test runs differently: line -> (what runs instead or None to skip, why).
STANDINS: dict[str, tuple[str | None, str]] = {
    "scripts/demo": (".venv/bin/zimg up --demo", "its stack part; scripts/setup is tested in tests/test_stack.py"),
    "scripts/test": (None, "it runs the whole suite, this test included"),
}


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    line: int  # the line of the opening fence
    language: str
    text: str
    section: str
    marker: tuple[str, str] | None = None  # ("skip", reason) or ("background", url)

    @property
    def id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.section).strip("-")[:40]
        return f"L{self.line}-{self.language}-{slug}"


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block in a language we run, with its section heading and the marker before it, if any."""
    blocks: list[Block] = []
    lines = text.splitlines()
    section, i = "top", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        fence = re.match(r"^(\s*)(```+|~~~+)\s*([A-Za-z0-9_+-]*)", line)
        if not fence:
            i += 1
            continue
        indent, ticks, language = fence.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(ticks):
            end += 1
        body = "\n".join(raw[len(indent) :] if raw.startswith(indent) else raw for raw in lines[i + 1 : end])
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        found = MARKER_RE.search(before)
        if language.lower() in LANGUAGES:
            marker = (found.group(1), found.group(2).strip("() ")) if found else None
            blocks.append(Block(i + 1, LANGUAGES[language.lower()], body + "\n", section, marker))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder that looks like the clone: a link to each of its top-level entries."""
    work = tmp_path_factory.mktemp("readme")
    for entry in ROOT.iterdir():
        if entry.name not in (".git", "README.md") and not entry.name.startswith(".pytest"):
            (work / entry.name).symlink_to(entry)
    return work


@pytest.fixture(scope="module")
def readme_env(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private Redis and a sim stack (inference server + 2 workers), and the reader's environment."""
    tmp = tmp_path_factory.mktemp("readme-stack")
    redis = EmbeddedRedis(tmp / "redis", port=free_port()).start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
    env.update(
        ZIMG_REDIS_URL=redis.url,
        ZIMG_INFERENCE_URL=f"http://127.0.0.1:{port}",
        XDG_DATA_HOME=str(workdir / "xdg-data"),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
    )
    zimg = [sys.executable, "-m", "zimg_queue.cli"]
    log = (tmp / "stack.log").open("ab")
    inference = subprocess.Popen([*zimg, "inference-server", "--port", str(port)], env=env, stdout=log, stderr=log)
    procs = [inference]
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", inference, timeout=60)
        procs.append(subprocess.Popen([*zimg, "worker", "--processes", "2"], env=env, stdout=log, stderr=log))
        yield env
    finally:
        stop_processes(*reversed(procs))
        redis.stop()


def _script(block: Block) -> str:
    """The block's text, with :data:`STANDINS` applied to whole command lines (comments aside)."""
    out = []
    for line in block.text.splitlines():
        command = line.split("#", 1)[0].strip()
        if command in STANDINS:
            instead, why = STANDINS[command]
            out.append(f"{instead}  # readme-test stands in for `{command}`: {why}" if instead else f"# {line}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _skipped_standins(block: Block) -> list[str]:
    return [
        f"`{cmd}` not run: {why}"
        for cmd, (instead, why) in STANDINS.items()
        if instead is None and any(line.split("#", 1)[0].strip() == cmd for line in block.text.splitlines())
    ]


def _run(block: Block, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    path = cwd / f"readme-L{block.line}.{'py' if block.language == 'python' else 'sh'}"
    if block.language == "python":
        path.write_text(block.text)
        args = [str(BIN / "python"), str(path)]
    else:
        path.write_text("set -euo pipefail\n" + _script(block))
        args = ["bash", str(path)]
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)


def _background(block: Block, url: str, env: dict[str, str], cwd: Path) -> None:
    """Start a server block, see ``url`` answer 200, stop the whole process group."""
    env = {**env, "PORT": str(free_port())}
    url = re.sub(r"\$\{?PORT\}?", env["PORT"], url)
    path = cwd / f"readme-L{block.line}.sh"
    path.write_text("set -euo pipefail\n" + _script(block))
    log = (cwd / f"readme-L{block.line}.log").open("w+")
    proc = subprocess.Popen(["bash", str(path)], env=env, cwd=cwd, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"exited with {proc.returncode}:\n{Path(log.name).read_text()[-3000:]}"
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        pytest.fail(f"{url} did not answer 200 within 60 s:\n{Path(log.name).read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_the_readme_has_blocks_to_run_and_markers_that_parse():
    assert len(BLOCKS) >= 5 and {b.language for b in BLOCKS} >= {"bash", "python", "toml"}
    text = README.read_text(encoding="utf-8")
    assert len(MARKER_RE.findall(text)) == text.count("readme-test:")  # no misspelt marker goes unnoticed
    assert all(b.marker is None or b.marker[1] for b in BLOCKS), "a marker needs a reason or a URL"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(block: Block, readme_env: dict[str, str], workdir: Path):
    if block.marker and block.marker[0] == "skip":
        pytest.skip(f"README.md line {block.line}: {block.marker[1]}")
    if block.language == "toml":
        import tomllib

        from zimg_queue.presets import parse_presets

        data = tomllib.loads(block.text)  # raises on a TOML error
        if {"presets", "watermarks", "schedules", "defaults"} & set(data):  # a presets file: it must load
            parse_presets(data, workdir / "examples" / "daily_posters" / "readme.toml")
        return
    if block.marker and block.marker[0] == "background":
        _background(block, block.marker[1], readme_env, workdir)
        return
    done = _run(block, readme_env, workdir)
    assert done.returncode == 0, (
        f"README.md line {block.line} ({block.section}) failed with exit code {done.returncode}\n"
        f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-3000:]}"
    )
    for note in _skipped_standins(block):
        print(note)
