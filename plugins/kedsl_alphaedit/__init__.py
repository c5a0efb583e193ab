"""kedsl_alphaedit: AlphaEdit (Fang et al. 2025), null-space-constrained knowledge editing.

AlphaEdit is MEMIT's multi-layer update with each layer's change projected onto the null
space of the keys the model should keep answering as before (estimated from the layer's
key statistics), plus the keys of all earlier edits in the sequence, so that a stream of
edits neither disturbs preserved knowledge nor undoes earlier edits. The implementation
(:mod:`kedsl_alphaedit.alphaedit`) shares everything else with MEMIT through
:mod:`kedsl.toolkit.multilayer`; its parameters are declared once, in
:mod:`kedsl_alphaedit.config`. This module holds only descriptors and must stay
importable without torch.
"""
from __future__ import annotations

from kedsl.plugin import MethodSpec, hookimpl

from .config import DEPTH, PRESETS, AlphaEditConfig

#: The declared parameters (derived from :class:`AlphaEditConfig`).
PARAMS = AlphaEditConfig.params()


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="alphaedit",
            implementation="kedsl_alphaedit.alphaedit:AlphaEdit",
            config=AlphaEditConfig,
            doc="AlphaEdit: MEMIT's update projected onto the null space of preserved and earlier-edited keys; built for long sequences of edits.",
            supports_batch=True,
            supports_sequential=True,
            presets=PRESETS,
            depth_defaults=DEPTH,
            kinds=("edit", "insert", "erase"),
        )
    ]
