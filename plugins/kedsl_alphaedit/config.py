"""AlphaEdit's parameters, declared once (torch-free: ``kedsl check`` validates scripts
against them): the multi-layer ones every such method shares, plus its own; and its
presets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kedsl.plugin import Depth, Preset, param
from kedsl.toolkit.multilayer_config import MultiLayerConfig


@dataclass
class AlphaEditConfig(MultiLayerConfig):
    """AlphaEdit's configuration: the shared multi-layer parameters and its projected update."""

    method: ClassVar[str] = "alphaedit"

    null_space_threshold: float = param(1e-2, "eigen-directions of the key second moment C below this fraction of its largest eigenvalue form the null space the update may use", min=0.0, max=1.0)
    l2: float = param(10.0, "ridge term alpha in (P(w K_p K_p^T + K K^T) + alpha I) dW^T = P K R^T", min=0.0)
    earlier_weight: float = param(1.0, "w in the system of l2: how strongly the keys of earlier edits in the sequence are held to their outputs against the new edit (1 is the paper's)", min=0.0)


PRESETS = (
    Preset(
        model="smollm2-135m",
        values={"layers": [2, 3, 4, 5, 6, 7, 8], "l2": 1.0, "earlier_weight": 16.0, "context_count": 1},
        measured_by=(
            "l2 swept on ZsRE records 0-9 and 40-79 in one batch, with MEMIT's search and layer settings "
            "(tables in kedsl_memit.memit.SWEEP); earlier_weight, l2, the threshold and spread passes in "
            "100 sequential edits of records 100-199 (kedsl_alphaedit.alphaedit.MEASURED)"
        ),
    ),
    Preset(
        model="gemma3-270m",
        values={"layers": [2], "clamp_norm_factor": 2.0, "v_weight_decay": 0.001},
        measured_by=(
            "Gemma 3 270M, ZsRE tuning records 0-9, single edits (bench/preset_sweep.py --model gemma3-270m "
            "--method alphaedit --param layers --values 2..2 --limit 10 --set clamp_norm_factor=2.0 --set "
            "v_weight_decay=0.001; bench/results/presets/gemma3-270m/alphaedit): efficacy 0.960, generalization "
            "0.940, locality 0.863. MEMIT's Gemma preset (the same spread), the only setting measured"
        ),
    ),
)

#: For models without a measured preset: the same fraction of depth as the measured
#: preset (AlphaEdit: layers 2..8 of 30 on SmolLM2).
DEPTH = (Depth("layers", 0.07, 0.27),)
