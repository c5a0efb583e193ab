"""kedsl_memit: Mass-Editing Memory in a Transformer (Meng et al. 2023).

MEMIT writes many facts at once by spreading one least-squares update over the MLP
output projections of several consecutive layers. The implementation
(:mod:`kedsl_memit.memit`) is built from the shared toolkit (:mod:`kedsl.toolkit`); its
parameters are declared once, in :mod:`kedsl_memit.config`. This module holds only
descriptors and must stay importable without torch.
"""
from __future__ import annotations

from kedsl.plugin import MethodSpec, hookimpl

from .config import DEPTH, PRESETS, MEMITConfig

#: The declared parameters (derived from :class:`MEMITConfig`).
PARAMS = MEMITConfig.params()


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="memit",
            implementation="kedsl_memit.memit:MEMIT",
            config=MEMITConfig,
            doc="Mass-Editing Memory in a Transformer: many facts in one least-squares update spread over several MLP layers.",
            supports_batch=True,
            supports_sequential=True,
            presets=PRESETS,
            depth_defaults=DEPTH,
            kinds=("edit", "insert", "erase"),
        )
    ]
