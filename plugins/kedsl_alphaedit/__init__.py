"""kedsl_alphaedit: AlphaEdit (Fang et al. 2025), null-space-constrained knowledge editing.

AlphaEdit is MEMIT's multi-layer update with each layer's change projected onto the null
space of the keys the model should keep answering as before (estimated from the layer's
key statistics), plus the keys of all earlier edits in the sequence, so that a stream of
edits neither disturbs preserved knowledge nor undoes earlier edits. The implementation
(:mod:`kedsl_alphaedit.alphaedit`) shares everything else with MEMIT through
:mod:`kedsl.toolkit.multilayer`; this module holds only descriptors and must stay
importable without torch.
"""
from __future__ import annotations

from kedsl.hookspecs import hookimpl
from kedsl.params import Param, Preset
from kedsl.specs import MethodSpec
from kedsl.toolkit.multilayer_params import LAYERS, SHARED

PARAMS = (
    LAYERS,
    Param("null_space_threshold", "float", 1e-2, "eigen-directions of the key second moment C below this fraction of its largest eigenvalue form the null space the update may use", min=0.0, max=1.0),
    Param("l2", "float", 10.0, "ridge term alpha in (P(w K_p K_p^T + K K^T) + alpha I) dW^T = P K R^T", min=0.0),
    Param("earlier_weight", "float", 1.0, "w in the system of l2: how strongly the keys of earlier edits in the sequence are held to their outputs against the new edit (1 is the paper's)", min=0.0),
    *SHARED,
)

PRESETS = (
    Preset(
        family="llama",
        values={"layers": [2, 3, 4, 5, 6, 7, 8], "l2": 1.0, "earlier_weight": 16.0, "context_count": 1},
        measured_by=(
            "l2 swept on ZsRE records 0-9 and 40-79 in one batch, with MEMIT's search and layer settings "
            "(tables in kedsl_memit.memit.SWEEP); earlier_weight, l2, the threshold and spread passes in "
            "100 sequential edits of records 100-199 (kedsl_alphaedit.alphaedit.MEASURED)"
        ),
    ),
    Preset(
        family="gpt2",
        values={"layers": [3, 4, 5, 6], "bf16": False},
        measured_by="not measured (no GPT-2 checkpoint offline): MEMIT's GPT-2 XL layers scaled to 12 layers; tests check only mechanics",
    ),
)


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="alphaedit",
            implementation="kedsl_alphaedit.alphaedit:AlphaEdit",
            params=PARAMS,
            doc="AlphaEdit: MEMIT's update projected onto the null space of preserved and earlier-edited keys; built for long sequences of edits.",
            supports_batch=True,
            supports_sequential=True,
            presets=PRESETS,
        )
    ]
