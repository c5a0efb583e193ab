"""kedsl_rome: Rank-One Model Editing (Meng et al. 2022, "Locating and Editing Factual
Associations in GPT").

ROME treats the MLP output projection of one layer as a key→value memory and writes one
fact with a rank-one update. The implementation (:mod:`kedsl_rome.rome`) is built from
the shared toolkit (:mod:`kedsl.toolkit`); its parameters are declared once, in
:mod:`kedsl_rome.config`. This module holds only descriptors and must stay importable
without torch.
"""
from __future__ import annotations

from kedsl.plugin import MethodSpec, hookimpl

from .config import DEPTH, PRESETS, ROMEConfig

#: The declared parameters (derived from :class:`ROMEConfig`).
PARAMS = ROMEConfig.params()


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="rome",
            implementation="kedsl_rome.rome:ROME",
            config=ROMEConfig,
            doc="Rank-One Model Editing: one fact per edit, rank-one update of one MLP output projection.",
            supports_batch=False,
            supports_sequential=True,
            presets=PRESETS,
            depth_defaults=DEPTH,
            kinds=("edit", "insert", "erase"),
        )
    ]
