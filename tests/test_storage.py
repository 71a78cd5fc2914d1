"""ImageStore: content-addressed names, atomic writes, and no way in for user paths."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from workers.storage import ImageStore

KEY = hashlib.sha256(b"request").hexdigest()


def test_write_is_atomic_and_named_by_key(tmp_path: Path):
    store = ImageStore(tmp_path)
    path = store.write(KEY, "jpeg", b"data")
    assert path == tmp_path.resolve() / f"{KEY}.jpg" and path.read_bytes() == b"data"
    assert store.find(KEY, "jpeg") == path and store.find(KEY, "png") is None
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_the_file_and_its_name_are_on_disk_before_write_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A finished job's file must survive a power cut: its data is fsynced before the rename, and the folder (which
    holds the new name) after it; without the second, the job's result could name a file the disk never recorded."""
    store = ImageStore(tmp_path)
    events: list[tuple[str, bool]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("rename", False))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store.write(KEY, "png", b"data")
    assert events == [("fsync", False), ("rename", False), ("fsync", True)]


@pytest.mark.parametrize(("code", "fails"), [(errno.EINVAL, False), (errno.EIO, True)])
def test_a_folder_the_filesystem_cannot_sync_still_takes_images(tmp_path: Path, monkeypatch, code: int, fails: bool):
    """Some filesystems refuse to fsync a folder (EINVAL): the image is still written; a real I/O error is raised."""
    store = ImageStore(tmp_path)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    if fails:
        with pytest.raises(OSError):
            store.write(KEY, "png", b"data")
    else:
        assert store.write(KEY, "png", b"data").read_bytes() == b"data"


def test_a_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = ImageStore(tmp_path)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.write(KEY, "png", b"half an image")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["../etc/passwd", "a" * 63, KEY.upper(), f"{KEY}/x"])
def test_keys_that_are_not_digests_never_reach_the_filesystem(tmp_path: Path, key: str):
    with pytest.raises(ValueError):
        ImageStore(tmp_path).path_for(key, "png")


def test_owns_only_files_directly_inside(tmp_path: Path):
    store = ImageStore(tmp_path / "images")
    inside = store.write(KEY, "png", b"x")
    outside = tmp_path / "secret.txt"
    outside.write_text("no")
    assert store.owns(inside)
    assert not store.owns(outside)
    assert not store.owns(store.root / ".." / "secret.txt")


def test_orphaned_temp_files_of_dead_writers_are_removed_live_ones_kept(tmp_path: Path):
    import subprocess

    from workers import storage

    store = ImageStore(tmp_path)
    store.write(KEY, "png", b"done")
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = tmp_path / f".{KEY[:16]}.{storage._HOST}.{dead.pid}.abc123.part"
    live = tmp_path / f".{KEY[:16]}.{storage._HOST}.{os.getpid()}.def456.part"
    other_host = tmp_path / f".{KEY[:16]}.elsewhere.{dead.pid}.ghi789.part"
    for p in (orphan, live, other_host):
        p.write_bytes(b"half")
    assert store.remove_orphans() == [orphan]
    assert live.exists() and other_host.exists() and store.find(KEY, "png")


@pytest.mark.parametrize(("umask", "mode"), [("022", 0o644), ("027", 0o640), ("077", 0o600)])
def test_image_files_honour_the_umask(tmp_path: Path, umask: str, mode: int):
    """Written as open() would under the writer's umask (mkstemp alone makes every image 0600)."""
    code = "import sys; from workers.storage import ImageStore as S; print(S(sys.argv[1]).write('a' * 64, 'png', b'x'))"
    out = subprocess.run(
        ["bash", "-c", f'umask {umask} && exec "$0" -c "$1" "$2"', sys.executable, code, str(tmp_path)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert stat.S_IMODE(Path(out.stdout.strip()).stat().st_mode) == mode
