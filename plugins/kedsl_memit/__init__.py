"""kedsl_memit: Mass-Editing Memory in a Transformer (Meng et al. 2023).

MEMIT writes many facts at once by spreading one least-squares update over the MLP
output projections of several consecutive layers. The implementation
(:mod:`kedsl_memit.memit`) is built from the shared toolkit (:mod:`kedsl.toolkit`); this
module holds only descriptors and must stay importable without torch.
"""
from __future__ import annotations

from kedsl.hookspecs import hookimpl
from kedsl.params import Param, Preset
from kedsl.specs import MethodSpec
from kedsl.toolkit.multilayer_params import LAYERS, SHARED

PARAMS = (
    LAYERS,
    Param("mom2_update_weight", "float", 15000.0, "lambda in (lambda*C + K K^T) dW^T = K R^T: how strongly the keys of other text are preserved", min=0.0),
    *SHARED,
)

PRESETS = (
    Preset(
        family="llama",
        values={"layers": [2, 3, 4, 5, 6, 7, 8], "mom2_update_weight": 1500.0, "spread_passes": 2, "context_count": 1},
        measured_by=(
            "swept on ZsRE records 0-499 in one batch (bench/multilayer_sweep.py; tables in kedsl_memit.memit.SWEEP): "
            "lambda on 0-9, the search's templates and bounds on 20-39, layers 4..8 vs 2..8 and 8192 vs 65536 "
            "statistics tokens on 40-79, layers down to 0 and the statistics corpus on 100-149, one or two spread "
            "passes with lambda on 100-149, lambda again on 100-149 with kedsl bench after the faster search (table 7)"
        ),
    ),
    Preset(
        family="gpt2",
        values={"layers": [3, 4, 5, 6], "bf16": False},
        measured_by="not measured (no GPT-2 checkpoint offline): MEMIT's GPT-2 XL layers 13..17 of 48 scaled to 12 layers; tests check only mechanics",
    ),
)


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="memit",
            implementation="kedsl_memit.memit:MEMIT",
            params=PARAMS,
            doc="Mass-Editing Memory in a Transformer: many facts in one least-squares update spread over several MLP layers.",
            supports_batch=True,
            supports_sequential=True,
            presets=PRESETS,
        )
    ]
