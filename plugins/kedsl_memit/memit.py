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
from typing import Any

import torch

from kedsl.plugin import EditContext, EditOutcome, EditRequest, LoadedModel, Method
from kedsl.toolkit.multilayer import least_squares_update, multilayer_edit
from kedsl.toolkit.stats import prepare_second_moments, second_moment

from .config import MEMITConfig

log = logging.getLogger(__name__)

SWEEP = """Sweeps on SmolLM2, ZsRE tuning records (0-499), each batch searched once and every
row applied to the unedited model and undone; teacher-forced token accuracy; locality =
share of the loc answer's predicted tokens unchanged (bench/multilayer_sweep.py; JSON in
bench/results/multilayer_*).

1. The per-layer rule, records 0-9, layers 4..8, the search with 11 context templates
   (697 s, mean target probability 0.622). AlphaEdit's relative threshold 1e-2 leaves a
   null space of 713/826/865/1004/1330 of 1536 dimensions at layers 4-8.
   `--records 0:10 --lambdas 15000,1000,100,10,1 --l2s 10,1,0.1`

| setting | efficacy | generalization | locality | share of the target gap closed |
| :--- | ---: | ---: | ---: | ---: |
| memit lambda=15000 (MEMIT's GPT-J value) | 0.288 | 0.205 | 0.983 | 0.31 |
| memit lambda=1000 | 0.729 | 0.505 | 0.940 | 0.77 |
| memit lambda=100 | 0.805 | 0.414 | 0.873 | 0.86 |
| memit lambda=10 | 0.790 | 0.400 | 0.890 | 0.86 |
| alphaedit l2=10 | 0.612 | 0.476 | 0.923 | 0.62 |
| alphaedit l2=1 | 0.819 | 0.414 | 0.900 | 0.86 |
| alphaedit l2=0.1 | 0.805 | 0.414 | 0.933 | 0.87 |

2. The target search, records 20-39 in one batch of 20, 3 context templates
   (context_count=1), layers 4..8, 25 steps each (2 threads). MEMIT's own bounds (clamp
   0.75, weight decay 0.5) beat ROME's looser ones here; with 3 templates instead of 11
   the search costs ~3.7x less per fact (measured: 1.40/2.96/11.51 s per step for 10 facts
   with 1/3/11 templates) and reaches a higher target probability (0.83 vs 0.62 on 0-9).
   `--records 20:40 --lambdas 1000,100,10 --l2s 1,0.1 --search memit3:context_count=1,v_batch=0
   --search wide3:...,clamp_norm_factor=4,v_weight_decay=0.001 --search mid3:...,clamp_norm_factor=2,v_weight_decay=0.01`

| search (seconds, target prob.) | rule | efficacy | generalization | locality |
| :--- | :--- | ---: | ---: | ---: |
| clamp 0.75, wd 0.5 (146 s, 0.827) | memit lambda=1000 | 0.739 | 0.448 | 0.946 |
| | **memit lambda=100** | 0.871 | 0.467 | 0.840 |
| | memit lambda=10 | 0.825 | 0.447 | 0.809 |
| | alphaedit l2=1 | 0.835 | 0.456 | 0.927 |
| clamp 4, wd 1e-3 (124 s, 0.822) | memit lambda=100 | 0.826 | 0.502 | 0.844 |
| | alphaedit l2=1 | 0.793 | 0.434 | 0.922 |
| clamp 2, wd 1e-2 (115 s, 0.821) | memit lambda=100 | 0.836 | 0.495 | 0.844 |
| | alphaedit l2=1 | 0.792 | 0.434 | 0.925 |

3. The spread, records 40-79 (39 facts with a target) in one batch, the same targets for
   every row (3 templates, clamp 0.75, 241 s at 1 thread, target probability 0.853):
   layers 4..8 vs 2..8 (the searched layer stays 8), statistics over 8192 vs 65536 tokens.
   `--records 40:80 --lambdas 1000,300,100 --l2s 10,1 --search memit3:context_count=1,v_batch=0
   --spread base: --spread s64k:mom2_samples=65536 --spread deep:layers=2..8 --spread deep64k:layers=2..8,mom2_samples=65536`

| layers, statistics | rule | efficacy | generalization | locality |
| :--- | :--- | ---: | ---: | ---: |
| 4..8, 8192 | memit lambda=1000 | 0.793 | 0.500 | 0.835 |
| | memit lambda=300 | 0.883 | 0.464 | 0.815 |
| | memit lambda=100 | 0.873 | 0.428 | 0.817 |
| | alphaedit l2=10 | 0.687 | 0.481 | 0.891 |
| | alphaedit l2=1 | 0.857 | 0.441 | 0.799 |
| 4..8, 65536 | memit lambda=1000 | 0.709 | 0.487 | 0.882 |
| | memit lambda=300 | 0.854 | 0.476 | 0.836 |
| | memit lambda=100 | 0.879 | 0.438 | 0.815 |
| | alphaedit l2=1 | 0.848 | 0.438 | 0.755 |
| **2..8, 8192** | memit lambda=1000 | 0.820 | 0.435 | 0.832 |
| | memit lambda=300 | 0.891 | 0.436 | 0.805 |
| | memit lambda=100 (chosen until table 5) | 0.892 | 0.427 | 0.842 |
| | alphaedit l2=10 | 0.737 | 0.458 | 0.895 |
| | **alphaedit l2=1** (preset) | 0.840 | 0.450 | 0.821 |
| 2..8, 65536 | memit lambda=1000 | 0.767 | 0.432 | 0.894 |
| | memit lambda=300 | 0.860 | 0.418 | 0.838 |
| | memit lambda=100 | 0.895 | 0.457 | 0.828 |

4. Layers and the statistics corpus once more, records 100-149 (49 facts) in one batch, the
   preset search (3 templates, 190 s at 1 thread, target probability 0.902):
   `--records 100:150 --lambdas 300,100,30 --l2s "" --spread l2-8: --spread l1-8:layers=1..8
   --spread l0-8:layers=0..8` and, with a corpus of the ZsRE questions (src, rephrase, loc)
   of records 0-99 and 150-499, `--spread questions:stats_corpus=FILE`.

| layers, corpus | lambda=1000 | lambda=300 | lambda=100 | lambda=30 |
| :--- | :--- | :--- | :--- | :--- |
| 2..8, model | 0.797 / 0.862 | 0.827 / 0.849 | 0.794 / 0.855 | 0.796 / 0.835 |
| 1..8, model | | 0.864 / 0.817 | 0.821 / 0.800 | 0.803 / 0.771 |
| 0..8, model | | 0.762 / 0.809 | 0.691 / 0.704 | 0.621 / 0.596 |
| 2..8, ZsRE questions | 0.793 / 0.900 | 0.813 / 0.865 | 0.849 / 0.815 | |

(efficacy / locality). Reaching down to layers 1 or 0 hurts both; question-like statistics
text moves the trade-off (locality +4 points at lambda 1000) but not past it.

5. Spread passes, the same 49 facts and targets as 4 (`--records 100:150 --lambdas
   3000,1000,300,100 --l2s 1 --spread passes1: --spread passes2:spread_passes=2`): one pass
   closes ~78% of the gap to the targets (each layer's change moves the keys the later
   layers see); a second pass over the remaining gap closes ~90% and moves the whole
   frontier out, so a larger lambda buys the locality back.

| passes | lambda=3000 | lambda=1000 | lambda=300 | lambda=100 |
| :--- | :--- | :--- | :--- | :--- |
| 1 | 0.676 / 0.915 | 0.797 / 0.862 | 0.827 / 0.849 | 0.794 / 0.855 |
| **2** | 0.788 / 0.891 | **0.906 / 0.861** | 0.886 / 0.829 | 0.864 / 0.837 |

6. An earlier stop for speed, records 100-149, the preset (2 threads): `--search
   early:v_nll_tol=0.5` searched in 104 s instead of 120 s (a chunk waits for its slowest
   fact) with mean target probability 0.71 instead of 0.90, and efficacy 0.823 / locality
   0.870 instead of 0.907 / 0.847: not adopted.

7. Lambda once more after the search and spread were rewritten for speed (the same
   computation, other bf16 rounding: math attention kernel, replayed lower layers, the
   chunked spread reader), records 100-149 in one batch with `kedsl bench --mode batch
   --batch-size 50 --offset 100 --limit 50 --metrics efficacy,generalization,locality
   --param mom2_update_weight=L` (bench's locality, stricter here than the sweep's; JSON
   `bench/results/memit_smollm2_zsre_100-149_batch50_lambda*.json`; the 1000 run came
   before the spread reader, which changes only float32 rounding):

| lambda | efficacy | generalization | locality |
| ---: | ---: | ---: | ---: |
| 1000 | 0.926 | 0.514 | 0.840 |
| **1500** | 0.911 | 0.502 | 0.865 |
| 2000 | 0.902 | 0.518 | 0.855 |

8. Facts that share a subject, records 100-149 and 300-349 in one batch of 50 each, the
   preset, `kedsl bench --mode batch --batch-size 50 --offset O --limit 50 --metrics
   efficacy,generalization,locality [--param joint_subjects=true]` (JSON
   `bench/results/memit_slices/tune_*_{v_steps25,joint_subjects}.json`). Of each batch's 50
   facts, 31-32 share their subject with another fact of the batch (ZsRE often asks one
   question of one subject several times, with a different new answer each time); they
   reach lower efficacy and far lower generalization than the facts with a subject of
   their own (the same split on held-out 600-749: shared 74-91 efficacy, own 94-95).
   `joint_subjects` searches one target shift per subject over all its facts' prompts
   (:func:`kedsl.toolkit.multilayer.subject_groups`), since the facts' keys sit at the
   subject's last token:

| records, search | all 50: efficacy / gen. / locality | own subject (18) | shared subject (31-32) |
| :--- | :--- | :--- | :--- |
| 100-149, a shift per fact (preset) | 0.904 / 0.492 / 0.847 | 0.978 / 0.802 / 0.847 | 0.862 / 0.312 / 0.847 |
| 100-149, `joint_subjects` | 0.863 / 0.552 / 0.859 | 0.978 / 0.827 / 0.853 | 0.797 / 0.392 / 0.862 |
| 300-349, a shift per fact (preset) | 0.914 / 0.455 / 0.870 | 0.972 / 0.757 / 0.827 | 0.882 / 0.285 / 0.893 |
| 300-349, `joint_subjects` | 0.758 / 0.547 / 0.885 | 0.972 / 0.764 / 0.842 | 0.638 / 0.424 / 0.908 |

   One shift per subject raises the shared facts' generalization by 8-14 points and costs
   7-24 points of their efficacy: where the answers contradict each other, one shift can
   only serve one of them, while separate shifts at slightly different keys fit each
   question's own wording. Kept as an option, off in the presets.

The rule: the highest efficacy with the best locality beside it. Presets (llama family):
MEMIT layers 2..8, two spread passes, lambda 1500 (1000 until table 7); AlphaEdit layers 2..8, one pass, l2 1,
earlier_weight 16 (its sequential sweep, two passes included, is in kedsl_alphaedit.alphaedit.MEASURED); both 3
context templates, MEMIT's search bounds, statistics over 8192 tokens (65536 cost 5 min of corpus sampling and moved the
trade-off along the same frontier rather than past it). With one pass, efficacy and
locality traded along one frontier (at 40-50 facts no setting had both above 0.85); the
second pass (table 5) is what moved it."""


class MEMIT(Method):
    """The method class named by kedsl_memit's MethodSpec."""

    def touches(self, model: LoadedModel, params: dict[str, Any]) -> list[str]:
        """The MLP output projections of the edited layers (for ``kedsl plan``)."""
        return MEMITConfig.from_params(params).touched(model)

    def apply(self, model: LoadedModel, requests: list[EditRequest], params: dict[str, Any], context: EditContext) -> EditOutcome:
        cfg = MEMITConfig.from_params(params, context.seed)
        t_stats = 0.0
        if cfg.mom2_update_weight > 0:  # every layer's statistics, before any layer is written
            ts = time.perf_counter()
            prepare_second_moments(model, cfg.layers, cfg.stats_corpus, cfg.mom2_samples, cfg.seed)
            t_stats += time.perf_counter() - ts

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
