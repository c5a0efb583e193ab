"""The ``gradient_step`` method (imports torch): plain gradient steps on the target's
cross-entropy, on one MLP output projection, every change through the weight journal so
that kedsl can undo, record and revert it exactly. It reuses kedsl's toolkit for the
loss (the target tokenized jointly with the prompt, the prompt masked)."""
from __future__ import annotations

from typing import Any

import torch

from kedsl.plugin import EditContext, EditOutcome, EditRequest, LoadedModel, Method
from kedsl.toolkit.objectives import masked_target_loss

from . import GradientStepConfig


class GradientStep(Method):
    def touches(self, model: LoadedModel, params: dict[str, Any]) -> list[str]:
        cfg = GradientStepConfig.from_params(params)
        model.check_layer(cfg.layer)  # a clear UsageError for a layer out of range
        return [model.mlp_out_weight_name(cfg.layer)]

    def apply(self, model: LoadedModel, requests: list[EditRequest], params: dict[str, Any], context: EditContext) -> EditOutcome:
        (name,) = self.touches(model, params)
        cfg = GradientStepConfig.from_params(params, context.seed)
        weight = model.parameter(name)
        losses = []
        for _ in range(cfg.steps):
            with torch.enable_grad():
                loss = masked_target_loss(model, requests)
                (grad,) = torch.autograd.grad(loss, weight)
            context.weights.add_(name, -cfg.lr * grad)  # journaled: exact undo and revert
            losses.append(float(loss.detach()))
        return context.outcome(weight=name, losses=losses)
