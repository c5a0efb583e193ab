"""Durable files: flushing to disk and telling whether the process that wrote a file is
gone. Written once here for the two writers that need them, the provenance store (its
blobs) and model saving (its atomic directory swap); and a file's SHA-256. Torch-free."""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 4 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk; a platform or
    file system that cannot fsync a directory is not an error."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the directories themselves to disk, so that a
    rename that follows publishes complete content even after a crash."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs on this host. Another user's process counts as
    alive; a zombie (killed, not yet reaped by its parent) as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b") ")[-1][:1] != b"Z"
    except OSError:  # no /proc (not Linux): os.kill said it exists
        return True


def private_temp(path: Path) -> Path:
    """A temporary sibling of ``path`` that only this process writes, to be renamed onto
    ``path`` when complete: processes writing the same file at once (the ranks of a
    distributed run) never write into each other's half-written temp file."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")
