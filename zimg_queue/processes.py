"""Child processes: wait for one to answer, stop several together.

Shared by ``zimg up``, the private Redis, the test fixtures, the benchmarks and the examples.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import requests


def stop_processes(*procs: subprocess.Popen | None, timeout: float = 15) -> None:
    """SIGTERM every live process, wait up to ``timeout`` seconds in all, then SIGKILL what is left."""
    live = [p for p in procs if p is not None and p.poll() is None]
    for proc in live:
        proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in live:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(url: str, proc: subprocess.Popen, *, timeout: float, ok_codes: tuple[int, ...] = (200,)) -> None:
    """Wait until ``url`` answers, failing fast if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        try:
            if requests.get(url, timeout=1).status_code in ok_codes:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from ``/proc/<pid>/task/*/children``; Linux)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def descendants_of(pid: int) -> list[int]:
    """Every live descendant of ``pid``, children first."""
    kids = children_of(pid)
    return kids + [grandchild for kid in kids for grandchild in descendants_of(kid)]


#: Set by `zimg up` in its children's environment: its own pid (see :func:`die_with_supervisor`).
SUPERVISOR_ENV = "ZIMG_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def die_with_supervisor() -> None:
    """In a child of `zimg up`: be sent SIGTERM when `zimg up` dies, however it dies (Linux; elsewhere nothing).

    `zimg up` starts its children in sessions of their own (so that a terminal's signals reach it alone); without
    this, a `zimg up` killed outright (``kill -9``, the OOM killer) left them running, holding their ports. SIGTERM
    is their orderly stop: a worker finishes the job in hand. The variable is taken out of the environment, so
    nothing this process starts inherits it.
    """
    raw = os.environ.pop(SUPERVISOR_ENV, "")
    if raw.isdigit():
        die_with(int(raw))


def die_with(parent_pid: int) -> None:
    """Be sent SIGTERM when ``parent_pid`` (this process's parent) dies, however it dies (Linux; elsewhere nothing).

    The kernel's ``PR_SET_PDEATHSIG``; a fork does not inherit it, so each process asks for itself.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent_pid:  # it died before the request was made: nobody would send the signal now
        os.kill(os.getpid(), signal.SIGTERM)
