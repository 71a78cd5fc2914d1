"""``ImageStore``: content-addressed, atomically written image files.

A file's name is the SHA-256 of the canonical request, so a retry or a re-run of
the same request can never make a second file, and an existing file answers the
request without any GPU time. Files are written to a temporary name in the same
folder, fsynced, then renamed (and the folder fsynced): a reader never sees a partial
image, even if the worker is killed mid-write, and a written file survives a power cut.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
from pathlib import Path

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


class ImageStore:
    """Images under one folder, named ``<sha256>.<ext>``. Keys are hex digests, never user paths."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def path_for(self, key: str, fmt: str) -> Path:
        if not _KEY_RE.match(key) or fmt not in EXTENSIONS:
            raise ValueError("image keys are SHA-256 hex digests and formats png, jpeg or webp")
        return self.root / f"{key}.{EXTENSIONS[fmt]}"

    def find(self, key: str, fmt: str) -> Path | None:
        path = self.path_for(key, fmt)
        return path if path.is_file() else None

    def write(self, key: str, fmt: str, data: bytes) -> Path:
        """Write atomically and durably: temporary file, fsync, rename, fsync of the folder. Returns the final path.

        The folder's fsync makes the new name durable: without it a power cut could keep the job's result (Redis
        syncs every second) but lose the rename (ext4 commits it with its next journal commit, up to 5 s later).
        """
        path = self.path_for(key, fmt)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.{_HOST}.{os.getpid()}.", suffix=".part", dir=self.root)
        try:
            os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; an image is as readable as any file this user makes
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _sync_folder(self.root)
        return path

    def remove_orphans(self) -> list[Path]:
        """Delete temporary files left by writers on this host that were killed mid-write.

        A temporary name carries its writer's host and pid, so only files whose
        writer is gone are removed, never one another live worker is writing.
        """
        removed = []
        for tmp in self.root.glob(f".*.{_HOST}.*.part") if self.root.is_dir() else ():
            pid = tmp.name.split(".")[3] if tmp.name.count(".") >= 5 else ""
            if pid.isdigit() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        return removed

    def owns(self, path: str | Path) -> bool:
        """True when ``path`` is a file directly inside this store (used before serving a file)."""
        p = Path(path).resolve()
        return p.parent == self.root and p.is_file()


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so the names in it are on disk; a filesystem that cannot sync a folder is left as it is."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask (read without changing it where Linux allows; else set and restored at import)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Image files honour the umask like ``open()`` would (0644 under the usual 022), not ``mkstemp``'s 0600.
FILE_MODE = 0o666 & ~_umask()
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
