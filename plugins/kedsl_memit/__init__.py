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
        values={"layers": [4, 5, 6, 7, 8], "mom2_update_weight": 100.0},
        measured_by=(
            "lambda swept on ZsRE records 0-9 in one batch (bench/multilayer_sweep.py; table in "
            "kedsl_memit.memit.SWEEP); layers are a prior (around ROME's layer 6), not swept"
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
