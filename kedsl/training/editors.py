"""Trained editors on disk: ``DIR/editor.safetensors`` (every tensor of the trainer) and
``DIR/editor.json`` (the method, the hyper-parameters, the base model's fingerprint, the
training files' SHA-256, the validation curve, the training run in the provenance store).
Nothing is pickled; the tensors' SHA-256 is recorded and checked on every load."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import ModelError, UsageError
from ..files import file_sha256
from ..model.handle import LoadedModel
from ..registry.editors import EDITOR_CONFIG, EDITOR_TENSORS, read_editor_config
from ..toolkit.stats import base_fingerprint



def model_lineage(model: LoadedModel) -> set[str]:
    """The fingerprints an editor may have been trained on for this model: its base (the
    weights as first loaded) and, for a directory kedsl saved, the model it was edited from."""
    found = {base_fingerprint(model)}
    where = model.meta.get("path")
    record = Path(where) / "kedsl.json" if where else None
    if record is not None and record.is_file():
        try:
            before = (json.loads(record.read_text(encoding="utf-8")).get("provenance") or {}).get("fingerprint_before")
        except (OSError, ValueError):
            before = None
        if before:
            found.add(before)
    return found


def load_editor(directory: str | Path, method: str, model: LoadedModel) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON of the editor in ``directory``, after checking that it is one
    of ``method``, that its tensors are the ones recorded, and that it was trained for
    ``model`` (a user error with a hint otherwise)."""
    d = Path(directory).expanduser()
    config = read_editor_config(d)
    if config.get("method") != method:
        raise UsageError(f"{d} holds a {config.get('method')} editor, not a {method} one", f"pass an editor trained with `kedsl train {method}`")
    tensors_path = d / EDITOR_TENSORS
    if not tensors_path.is_file():
        raise ModelError(f"{d} has no {EDITOR_TENSORS}", "copy the whole editor folder, or train it again")
    if file_sha256(tensors_path) != config.get("sha256"):
        raise ModelError(f"{tensors_path} does not match the SHA-256 in {EDITOR_CONFIG}: the file was changed after training",
                         "restore the editor folder as kedsl train wrote it")  # fmt: skip
    trained_on = (config.get("base_model") or {}).get("fingerprint")
    if trained_on not in model_lineage(model):
        raise ModelError(
            f"the {method} editor in {d} was trained for another model (fingerprint {str(trained_on)[:16]}, "
            f"this one {base_fingerprint(model)[:16]})",
            f"train an editor for this model: kedsl train {method} --model {model.ref} --data FILE --out DIR",
        )
    database = config.get("database")
    if database and not Path(database).is_absolute():  # written relative to the editor's folder
        config = {**config, "database": str((d / database).resolve())}
    return load_file(str(tensors_path)), config
