"""The ``mend`` method: one pass of a trained editor (see :mod:`kedsl_mend`).

An edit computes the gradient factors of the requests' target NLL at the editor's layers
(one forward and backward pass of the model; batches pool their factors), runs the
editor's network on them and adds the resulting weight changes through
``context.weights``, so undo, revert and the audit trail are exact. The editor is checked
(its tensors' SHA-256, its method, the base model it was trained for) when first used and
cached per folder and model.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from kedsl.toolkit.gradients import encode_answers as encode
from kedsl.plugin import EditContext, EditOutcome, EditRequest, LoadedModel, Method, UsageError, load_editor

from .config import MENDConfig
from .editor import gradient_factors, weight_deltas

log = logging.getLogger(__name__)


class MEND(Method):
    def __init__(self) -> None:
        self._editors: dict[tuple[str, int], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]] = {}

    def _editor(self, model: LoadedModel, cfg: MENDConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
        if not cfg.editor:
            raise UsageError("mend needs a trained editor", 'give editor="DIR" (train one with `kedsl train mend --model ... --data ... --out DIR`)')
        key = (str(Path(cfg.editor).expanduser().absolute()), id(model))
        if key not in self._editors:
            tensors, config = load_editor(cfg.editor, "mend", model)
            names = config["tensors"]
            device = model.device
            params = {n: tensors[n].to(device) for n in names["parameters"]}
            buffers = {n: tensors[n].to(device) for n in names["buffers"]}
            self._editors[key] = (params, buffers, config)
        return self._editors[key]

    def touches(self, model: LoadedModel, params: dict[str, Any]) -> list[str]:
        _, _, config = self._editor(model, MENDConfig.from_params(params))
        return list(config["trainer"]["weights"])

    def apply(self, model: LoadedModel, requests: list[EditRequest], params: dict[str, Any], context: EditContext) -> EditOutcome:
        cfg = MENDConfig.from_params(params, context.seed)
        editor, buffers, config = self._editor(model, cfg)
        layers = [int(x) for x in config["trainer"]["layers"]]
        start = time.perf_counter()
        factors = gradient_factors(model, encode(model, [(r.prompt, r.target) for r in requests]), layers)
        with torch.no_grad():
            deltas = weight_deltas(model, editor, buffers, factors, cfg.lr_scale)
        for name, delta in deltas.items():
            context.weights.add_(name, delta)
        seconds = time.perf_counter() - start
        log.info("mend: %d request(s), layers %s, %.2fs", len(requests), layers, seconds)
        return context.outcome(
            editor=str(Path(cfg.editor).expanduser().absolute()),
            editor_sha256=config["sha256"],
            editor_train_runs=config.get("train_runs", []),
            editor_database=config.get("database"),
            layers=layers,
            delta_norms={name: float(d.norm()) for name, d in deltas.items()},
            seconds=seconds,
        )
