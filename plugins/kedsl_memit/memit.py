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
from typing import Any, ClassVar

import torch

from kedsl.editing import EditContext, EditOutcome, EditRequest
from kedsl.model.handle import LoadedModel
from kedsl.toolkit.multilayer import MultiLayerConfig, least_squares_update, multilayer_edit
from kedsl.toolkit.stats import second_moment

log = logging.getLogger(__name__)

SWEEP = """Sweep on SmolLM2, ZsRE records 0-9 (tuning split) as one batch, layers 4..8, the same
targets for every row (the search: 25 steps, 697 s, mean target probability 0.622), each
row applied to the unedited model and undone; teacher-forced token accuracy; AlphaEdit's
relative threshold 1e-2 leaves a null space of 713/826/865/1004/1330 of 1536 dimensions
at layers 4-8. Command: `.venv/bin/python bench/multilayer_sweep.py --records 0:10
--lambdas 15000,1000,100,10,1 --l2s 10,1,0.1 --json bench/results/multilayer_sweep_0-9.json`.

| setting | efficacy | generalization | locality | share of the target gap closed |
| :--- | ---: | ---: | ---: | ---: |
| memit lambda=15000 (MEMIT's GPT-J value) | 0.288 | 0.205 | 0.983 | 0.31 |
| memit lambda=1000 | 0.729 | 0.505 | 0.940 | 0.77 |
| **memit lambda=100** (preset) | 0.805 | 0.414 | 0.873 | 0.86 |
| memit lambda=10 | 0.790 | 0.400 | 0.890 | 0.86 |
| memit lambda=1 | 0.776 | 0.400 | 0.890 | 0.86 |
| alphaedit l2=10 | 0.612 | 0.476 | 0.923 | 0.62 |
| **alphaedit l2=1** (preset) | 0.819 | 0.414 | 0.900 | 0.86 |
| alphaedit l2=0.1 | 0.805 | 0.414 | 0.933 | 0.87 |

The rule: the highest efficacy with locality >= 0.85. What caps efficacy is the target
search, not the solve (even lambda -> 0 closes 86% of the gap): MEMIT's search settings
(clamp 0.75 of the residual norm, weight decay 0.5) reach a mean target probability of
0.62 in 25 steps here; they are not swept yet (each search of 10 facts costs ~700 s on
this AVX2-only CPU in float32). Ten records is a small sample: treat these presets as
provisional."""


@dataclass
class MEMITConfig(MultiLayerConfig):
    """MEMIT's parameters (see kedsl_memit.PARAMS for the documentation of each)."""

    method: ClassVar[str] = "memit"
    mom2_update_weight: float = 15000.0


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

        info = multilayer_edit(model, requests, cfg, context, solve)
        return context.outcome(stats_seconds=t_stats, **info)
