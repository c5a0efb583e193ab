"""MEND's parameters, declared once (torch-free): the method's (which trained editor to
use) and the editor's training hyper-parameters (``kedsl train mend --param NAME=VALUE``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kedsl.plugin import MethodConfig, param


@dataclass
class MENDConfig(MethodConfig):
    """The ``mend`` method: an edit is one pass of a trained editor."""

    method: ClassVar[str] = "mend"

    editor: str = param("", "the folder of a MEND editor trained for this model (kedsl train mend ... --out DIR)")
    lr_scale: float = param(1.0, "multiplies the editor's learned step sizes (1: as trained)", min=0.0, max=100.0)


@dataclass
class MENDTrainConfig(MethodConfig):
    """The MEND editor's hyper-parameters (Mitchell et al. 2022, defaults scaled to small models)."""

    method: ClassVar[str] = "mend"

    layers: list[int] | None = param(None, "layers whose MLP output projections are edited (default: the last three)", type="layers", min=0)
    rank: int = param(512, "hidden width of the gradient transform (one network per weight shape, shared by its layers)", min=1, max=8192)
    init_lr: float = param(1e-4, "initial per-layer step size of the edit", min=0.0)
    edit_weight: float = param(0.1, "c_edit: weight of the edit loss (the edited model's NLL of the target on the edit prompt and its paraphrases)", min=0.0)
    locality_weight: float = param(1.0, "c_loc: weight of the KL divergence from the base model on locality prompts", min=0.0)
    seed: int | None = param(None, "seed of the network's initialisation (default: the run's)", min=0)
