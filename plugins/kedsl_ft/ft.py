"""FT-L and FT-M: fine-tune one MLP output projection on the edit (see :mod:`kedsl_ft`).

Training runs on the live parameter (other parameters frozen for the duration; one that
a device map offloads is loaded onto its module's execution device for the training);
the original value is put back before the trained one is written through
``context.weights``, so the journal records the true "before" and undo/revert are
bit-exact.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch

from kedsl.plugin import EditContext, EditOutcome, EditRequest, LoadedModel, Method
from kedsl.toolkit.objectives import last_prompt_loss, masked_target_loss, unlikelihood_loss
from kedsl.toolkit.activations import record_layer_outputs, replaying
from kedsl.toolkit.precision import float32_master

from .config import FTConfig, FTLConfig, FTMConfig

log = logging.getLogger(__name__)


class _FineTune(Method):
    """Shared apply(); subclasses name the objective and the config class."""

    config_class: type[FTConfig] = FTConfig

    def loss(self, model: LoadedModel, requests: list[EditRequest]) -> torch.Tensor:
        raise NotImplementedError

    def touches(self, model: LoadedModel, params: dict[str, Any]) -> list[str]:
        cfg = self.config_class.from_params(params)
        model.check_layer(cfg.layer)
        return [model.mlp_out_weight_name(cfg.layer)]

    def apply(self, model: LoadedModel, requests: list[EditRequest], params: dict[str, Any], context: EditContext) -> EditOutcome:
        cfg = self.config_class.from_params(params)
        model.check_layer(cfg.layer)
        name = model.mlp_out_weight_name(cfg.layer)
        # a weight offloaded by a device map is trained on its module's execution device
        with model.resident(model.arch.mlp_out.format(cfg.layer)):
            weight = model.parameter(name)
            original = weight.detach().clone()
            bound = cfg.erase_norm_constraint if cfg.erase_norm_constraint > 0 and all(r.kind == "erase" for r in requests) else cfg.norm_constraint
            torch.manual_seed(context.seed)
            flags = {n: p.requires_grad for n, p in model.model.named_parameters()}
            was_training = model.model.training
            start = time.perf_counter()
            losses: list[float] = []
            try:
                for p in model.model.parameters():
                    p.requires_grad_(False)
                model.model.eval()  # no dropout: the edit must be deterministic
                # a bf16/fp16 weight trains through a float32 master copy (steps below its rounding survive)
                with float32_master(model.mlp_out(cfg.layer)) as trained_w:
                    start_w = trained_w.detach().clone()
                    trained_w.requires_grad_(True)
                    opt = torch.optim.Adam([trained_w], lr=cfg.lr, weight_decay=cfg.weight_decay)
                    # the layers below the trained one see the same tokens and weights at every
                    # step: their outputs are recorded once and replayed
                    below = list(model.module(model.arch.layers))[: cfg.layer]
                    with torch.no_grad():
                        recorded = record_layer_outputs(model.model, below, lambda: self.loss(model, requests)) if below else []
                    with torch.enable_grad():
                        for step in range(cfg.steps):
                            opt.zero_grad(set_to_none=True)
                            with replaying(below, recorded):
                                loss = self.loss(model, requests)
                            unlikely = unlikelihood_loss(model, requests) if cfg.unlearn > 0 else None
                            if unlikely is not None:
                                loss = loss + cfg.unlearn * unlikely
                            losses.append(float(loss.detach()))
                            if losses[-1] < cfg.nll_tol:
                                break
                            loss.backward()
                            opt.step()
                            if bound > 0:
                                with torch.no_grad():
                                    trained_w.copy_(torch.clamp(trained_w, start_w - bound, start_w + bound))
                    trained = trained_w.detach().to(weight.dtype).clone()
            finally:
                with torch.no_grad():
                    weight.copy_(original)
                for n, p in model.model.named_parameters():
                    p.requires_grad_(flags[n])
                weight.grad = None
                model.model.train(was_training)
        context.weights.set_(name, trained)
        seconds = time.perf_counter() - start
        log.info("%s layer %d: %d steps, loss %.3f -> %.3f, %.1fs", type(self).__name__, cfg.layer, len(losses), losses[0], losses[-1], seconds)
        return context.outcome(layer=cfg.layer, steps=len(losses), loss_start=losses[0], loss_end=losses[-1], norm_bound=bound, seconds=seconds)


class FTL(_FineTune):
    """FT-L: last-prompt-token objective, L∞-constrained change."""

    config_class = FTLConfig

    def loss(self, model: LoadedModel, requests: list[EditRequest]) -> torch.Tensor:
        return last_prompt_loss(model, requests)


class FTM(_FineTune):
    """FT-M: teacher-forced cross-entropy on target tokens only (prompt masked)."""

    config_class = FTMConfig

    def loss(self, model: LoadedModel, requests: list[EditRequest]) -> torch.Tensor:
        return masked_target_loss(model, requests)
