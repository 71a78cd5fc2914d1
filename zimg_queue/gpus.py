"""Which GPUs ``zimg up --gpus`` uses, and how the workers are spread over them.

One inference server per GPU (its own port, ``CUDA_VISIBLE_DEVICES`` set to that
GPU alone), and the workers split evenly between them: each worker group's
``ZIMG_INFERENCE_URL`` lists its own GPU's server first and the others after, so
a worker feeds its own GPU's batcher and fails over to the others when that
server is dead, unhealthy or full (:mod:`workers.inference_pool`).

With the ``sim`` backend each "GPU" is a simulator process, so the whole layout
runs and is tested on a machine with no GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

_GPU_ID = re.compile(r"^(\d+|GPU-[0-9A-Fa-f-]+|MIG-[0-9A-Za-z/-]+)$")


def visible_gpus() -> list[str]:
    """Every GPU this process may use, as ``CUDA_VISIBLE_DEVICES`` values.

    ``CUDA_VISIBLE_DEVICES`` when set (an operator or a container runtime already
    chose), else the physical GPUs ``nvidia-smi -L`` lists, else
    ``torch.cuda.device_count()`` when torch is importable; ``[]`` when none is found.
    """
    chosen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is not None:
        return [g.strip() for g in chosen.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        found = re.findall(r"^GPU (\d+):", out, flags=re.MULTILINE)
        if found:
            return found
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def parse_gpus(value: str | None) -> list[str]:
    """``"0,1"`` -> ``["0", "1"]``; ``"all"`` -> :func:`visible_gpus`; unset or empty -> ``[]`` (one server).

    Raises :class:`zimg_queue.settings.SettingsError` naming ``ZIMG_GPUS`` for a bad list.
    """
    from .settings import SettingsError

    if value is None or not value.strip():
        return []
    if value.strip().lower() == "all":
        found = visible_gpus()
        if not found:
            raise SettingsError([("gpus", value, "`all` found no GPU (nvidia-smi -L and torch.cuda saw none)")])
        return found
    gpus = [g.strip() for g in value.split(",") if g.strip()]
    bad = [g for g in gpus if not _GPU_ID.match(g)]
    if bad or not gpus:
        rule = "must be `all` or a comma list of GPU indexes or UUIDs, e.g. `0,1,2,3`"
        raise SettingsError([("gpus", value, rule + (f" (bad item {bad[0]!r})" if bad else ""))])
    if len(set(gpus)) != len(gpus):
        raise SettingsError([("gpus", value, "must not name a GPU twice")])
    return gpus


@dataclass(frozen=True)
class GpuServer:
    """One GPU's inference server and the worker processes that call it first."""

    gpu: str
    port: int
    workers: int
    urls: tuple[str, ...]  # this server's URL first, then the others (failover order)

    @property
    def url(self) -> str:
        return self.urls[0]


def layout(gpus: list[str], base_port: int, workers: int, host: str = "127.0.0.1") -> list[GpuServer]:
    """GPU ``i`` serves on ``base_port + i``; ``workers`` split as evenly as possible (earlier GPUs get the rest)."""
    urls = [f"http://{host}:{base_port + i}" for i in range(len(gpus))]
    servers = []
    for i, gpu in enumerate(gpus):
        count = workers // len(gpus) + (1 if i < workers % len(gpus) else 0)
        servers.append(GpuServer(gpu, base_port + i, count, tuple(urls[i:] + urls[:i])))
    return servers


def procfile(servers: list[GpuServer], backend: str) -> str:
    """The Procfile lines that run ``servers`` as ``zimg up --gpus`` does (honcho, foreman, systemd by hand)."""
    lines = []
    for s in servers:
        lines.append(f"inference-{s.gpu}: CUDA_VISIBLE_DEVICES={s.gpu} zimg inference-server --backend {backend} "
                     f"--port {s.port}")  # fmt: skip
    for s in servers:
        if s.workers:
            lines.append(f"worker-{s.gpu}: ZIMG_INFERENCE_URL={','.join(s.urls)} zimg worker --processes {s.workers}")
    return "\n".join(lines)


if __name__ == "__main__":  # `python zimg_queue/gpus.py`: what `--gpus all` would use here
    print(",".join(visible_gpus()) or "no GPU visible")
