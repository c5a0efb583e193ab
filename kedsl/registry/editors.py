"""Trained editors' folders, torch-free: the file names, the JSON's format, and reading it,
so that ``kedsl check`` can tell a script that names a missing or wrong editor before any
model loads. Methods whose :class:`~kedsl.registry.specs.MethodSpec` names a ``trainer``
take the folder as their ``editor`` parameter; a relative folder is read from the
working directory, like ``save to``. Loading the tensors is :mod:`kedsl.training.editors`'s job."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelError

EDITOR_TENSORS = "editor.safetensors"
EDITOR_CONFIG = "editor.json"
FORMAT = "kedsl-editor/1"
#: The parameter a method with a trainer takes its trained editor's folder in.
EDITOR_PARAM = "editor"


def read_editor_config(directory: str | Path) -> dict[str, Any]:
    """An editor's JSON; a :class:`ModelError` (exit 4) when it is missing or not an editor."""
    d = Path(directory)
    path = d / EDITOR_CONFIG
    if not path.is_file():
        raise ModelError(f"no trained editor in {d} (it has no {EDITOR_CONFIG})", "train one with `kedsl train METHOD ... --out DIR`")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelError(f"{path} is not a kedsl editor (format {config.get('format') if isinstance(config, dict) else None!r})")
    return config


def editor_folder(value: str, base_dir: str | Path) -> str:
    """The folder an ``editor`` value names: absolute, or relative to ``base_dir`` (where
    ``apply`` runs); "" for a blank value."""
    if not value.strip():
        return ""
    folder = Path(value).expanduser()
    return str((folder if folder.is_absolute() else Path(base_dir) / folder).absolute())


def editor_problem(directory: str | Path, method: str) -> tuple[str, str] | None:
    """What is wrong with ``directory`` as a ``method`` editor, as (message, hint), or None."""
    hint = f"train one with `kedsl train {method} --model ... --data ... --out DIR` and pass editor=\"DIR\""
    if not str(directory).strip():
        return f"{method} needs a trained editor", hint
    try:
        config = read_editor_config(directory)
    except ModelError as exc:
        return exc.message, exc.hint or hint
    if config.get("method") != method:
        return f"{directory} holds a {config.get('method')} editor, not a {method} one", hint
    if not (Path(directory) / EDITOR_TENSORS).is_file():
        return f"{directory} has no {EDITOR_TENSORS}", "copy the whole editor folder, or train it again"
    return None
