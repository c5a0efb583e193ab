"""Local sources: a Hugging Face model directory, or a ``.gguf`` file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kedsl.plugin import LoadedModel, ModelError, load_pretrained
from kedsl.plugin import load_gguf as load_gguf_file


def load_dir(ref: str, settings: dict[str, Any]) -> LoadedModel:
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise ModelError(f"model directory `{ref}` not found", "give an existing directory saved with save_pretrained")
    if not (path / "config.json").is_file():
        raise ModelError(
            f"`{ref}` is not a Hugging Face model directory (no config.json)",
            "point `model` at a directory written by save_pretrained (or by `save` in a kedsl script)",
        )
    return load_pretrained(path.resolve(), settings, source="local", meta={"path": str(path.resolve())})


def load_gguf(ref: str, settings: dict[str, Any]) -> LoadedModel:
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ModelError(f"GGUF file `{ref}` not found", "check the path in your `model` statement")
    return load_gguf_file(path, settings, source="gguf")
