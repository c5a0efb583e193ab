"""MEMIT's parameters, declared once (torch-free: ``kedsl check`` validates scripts against
them): the multi-layer ones every such method shares, plus its own; and its presets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kedsl.plugin import Depth, Preset, param
from kedsl.toolkit.multilayer_config import MultiLayerConfig


@dataclass
class MEMITConfig(MultiLayerConfig):
    """MEMIT's configuration: the shared multi-layer parameters and its update rule's lambda."""

    method: ClassVar[str] = "memit"

    mom2_update_weight: float = param(15000.0, "lambda in (lambda*C + K K^T) dW^T = K R^T: how strongly the keys of other text are preserved", min=0.0)


PRESETS = (
    Preset(
        model="smollm2-135m",
        values={"layers": [2, 3, 4, 5, 6, 7, 8], "mom2_update_weight": 1500.0, "spread_passes": 2, "context_count": 1},
        measured_by=(
            "swept on ZsRE records 0-499 in one batch (bench/multilayer_sweep.py; tables in kedsl_memit.memit.SWEEP): "
            "lambda on 0-9, the search's templates and bounds on 20-39, layers 4..8 vs 2..8 and 8192 vs 65536 "
            "statistics tokens on 40-79, layers down to 0 and the statistics corpus on 100-149, one or two spread "
            "passes with lambda on 100-149, lambda again on 100-149 with kedsl bench after the faster search (table 7)"
        ),
    ),
    Preset(
        model="gemma3-270m",
        values={"layers": [2], "clamp_norm_factor": 2.0, "v_weight_decay": 0.001},
        measured_by=(
            "Gemma 3 270M, ZsRE tuning records 0-9, single edits (bench/preset_sweep.py --model gemma3-270m "
            "--method memit --param layers --values 2..2,2..3,1..3 --limit 10 --set clamp_norm_factor=2.0 --set "
            "v_weight_decay=0.001; bench/results/presets/gemma3-270m/memit), efficacy/generalization/locality: "
            "layers 2..2 0.980/0.940/0.892, 2..3 0.820/0.820/0.942, 1..3 0.607/0.533/0.922. The search and bounds are "
            "ROME's Gemma preset (layer 2, clamp 2): Gemma norms the MLP output before the residual stream, and the "
            "last layer writes the search's delta itself (kedsl.toolkit.multilayer.spread_update); an earlier layer's "
            "share, through the inverse of its norm, loses efficacy with every layer added"
        ),
    ),
    Preset(
        model="qwen2.5-coder-0.5b",
        values={"layers": [2, 3, 4, 5, 6], "mom2_update_weight": 1500.0, "spread_passes": 2, "context_count": 1},
        measured_by=(
            "Qwen2.5-Coder-0.5B-Instruct, ZsRE tuning records 0-9, single edits (bench/preset_sweep.py --model "
            "qwen2.5-coder-0.5b --method memit --param layers --limit 10 --set mom2_update_weight=1500 --set "
            "spread_passes=2 --set context_count=1): layers 2..6 (the depth rule's, with SmolLM2's other values) "
            "efficacy 1.000, generalization 0.836, locality 0.950; the only setting measured so far (1..3 and 3..8 "
            "were cut for time)"
        ),
    ),
)

#: For models without a measured preset: the same fraction of depth as the measured
#: preset (MEMIT: layers 2..8 of 30 on SmolLM2).
DEPTH = (Depth("layers", 0.07, 0.27),)
