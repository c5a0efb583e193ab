"""MEMIT: Mass-Editing Memory in a Transformer (Meng et al. 2023), built on :mod:`kedsl.toolkit`.

Targets ``z`` after the last edited layer are searched for all facts of a batch together
(:func:`kedsl.toolkit.multilayer.search_targets`) and spread over the layers' MLP output
projections (:func:`kedsl.toolkit.multilayer.spread_update`). MEMIT's own part is the
per-layer rule: ``ΔW = argmin λ·tr(ΔW C ΔWᵀ) + ‖ΔW K − R‖²`` with ``C = E[k kᵀ]`` the
keys' second moment over a corpus (:mod:`kedsl.toolkit.stats`, cached) and
``λ = mom2_update_weight`` (:func:`kedsl.toolkit.multilayer.least_squares_update`).

Memory: the target search's rows are facts × context templates, all in one
forward/backward; ``v_batch`` searches the facts in chunks of that many (each chunk stops
on its own). Only one layer's ``C`` (``d_in²``) is held at a time. Sequential MEMIT edits
use the unedited model's statistics (the base fingerprint), as the paper does.

SWEEP records what has been measured towards the SmolLM2 (llama family) preset.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from kedsl.editing import EditContext, EditOutcome, EditRequest
from kedsl.model.handle import LoadedModel
from kedsl.toolkit.multilayer import MultiLayerConfig, least_squares_update, multilayer_edit
from kedsl.toolkit.stats import second_moment

log = logging.getLogger(__name__)

SWEEP = """NOT tuned yet: the llama preset (layers 4..8, lambda 15000, MEMIT's search settings)
is a prior, not a sweep over ZsRE 0-499. What has been run on SmolLM2 is listed in README
("Mass and sequential editing"); on an AVX2-only 2-core CPU one target-search step for
10 facts costs about 27 s in float32, which is what bounded the runs so far."""


@dataclass
class MEMITConfig(MultiLayerConfig):
    """MEMIT's parameters (see kedsl_memit.PARAMS for the documentation of each)."""

    mom2_update_weight: float = 15000.0
    v_batch: int = 10

    @classmethod
    def from_params(cls, params: dict[str, Any], default_seed: int = 0, method: str = "memit") -> "MEMITConfig":
        return super().from_params(params, default_seed, method)


class MEMIT:
    """The method class named by kedsl_memit's MethodSpec."""

    def touches(self, model: LoadedModel, params: dict[str, Any]) -> list[str]:
        """The MLP output projections of the edited layers (for ``kedsl plan``)."""
        return MEMITConfig.from_params(params).touched(model)

    def apply(self, model: LoadedModel, requests: list[EditRequest], params: dict[str, Any], context: EditContext) -> EditOutcome:
        cfg = MEMITConfig.from_params(params, context.seed)
        t_stats = 0.0

        def solve(layer: int, keys: torch.Tensor, residuals: torch.Tensor) -> torch.Tensor:
            nonlocal t_stats
            mom2 = None
            if cfg.mom2_update_weight > 0:
                ts = time.perf_counter()
                mom2 = second_moment(model, layer, cfg.stats_corpus, cfg.mom2_samples, cfg.seed)
                t_stats += time.perf_counter() - ts
            return least_squares_update(keys, residuals, mom2, cfg.mom2_update_weight)  # one layer's C at a time

        info = multilayer_edit(model, requests, cfg, context, solve, "memit")
        return context.outcome(stats_seconds=t_stats, **info)
