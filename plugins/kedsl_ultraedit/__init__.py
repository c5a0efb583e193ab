"""kedsl_ultraedit: UltraEdit (Gu et al. 2025), closed-form lifelong editing.

An edit costs one forward and backward pass: the inputs and output gradients of the edited
MLP projections at the positions that predict the answer are normalised with running
statistics carried across every edit the model has had (the "lifelong normalisation"),
turned into a requested output change per token, and written with one ridge solve per
projection. No training, no subject and no memory of earlier edits beyond the running
statistics, which are method state: saved with the model, rolled back with a failed edit,
continued by a later ``apply``. The implementation is :mod:`kedsl_ultraedit.ultraedit`;
its parameters are declared once, in :mod:`kedsl_ultraedit.config`. This module holds only
descriptors and must stay importable without torch.
"""
from __future__ import annotations

from kedsl.plugin import MethodSpec, hookimpl

from .config import DEPTH, PRESETS, UltraEditConfig

#: The declared parameters (derived from :class:`UltraEditConfig`).
PARAMS = UltraEditConfig.params()


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="ultraedit",
            implementation="kedsl_ultraedit.ultraedit:UltraEdit",
            config=UltraEditConfig,
            doc="UltraEdit: one forward/backward per edit, lifelong-normalised gradient factors, one ridge solve per edited projection; built for long sequences of edits in turns.",
            supports_batch=True,
            supports_sequential=True,
            presets=PRESETS,
            depth_defaults=DEPTH,
            kinds=("edit", "insert", "erase"),
        )
    ]
