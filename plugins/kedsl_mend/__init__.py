"""kedsl_mend: MEND, Model Editor Networks with Gradient Decomposition (Mitchell et al.
2022, "Fast Model Editing at Scale").

The fine-tuning gradient of an edit's loss with respect to a linear layer's weight is a
sum of rank-one outer products, one per token: the layer's input times the gradient at its
output. MEND learns a small network that transforms those two factors, and a step size per
layer, so that one pass (a forward and backward pass of the model plus the network) makes
the edit, generalizes to paraphrases and leaves other inputs alone. The editor is trained
first, with ``kedsl train mend`` (:mod:`kedsl_mend.train`), for one base model; an edit
then takes ``using mend(editor="DIR")`` (:mod:`kedsl_mend.mend`). The network and the
factors are in :mod:`kedsl_mend.editor`; the parameters are declared in
:mod:`kedsl_mend.config`. This module holds only descriptors and stays importable without
torch.
"""
from __future__ import annotations

from kedsl.plugin import MethodSpec, hookimpl

from .config import PRESETS, MENDConfig, MENDTrainConfig

__all__ = ["MENDConfig", "MENDTrainConfig", "SPEC", "register_methods"]

SPEC = MethodSpec(
    name="mend",
    implementation="kedsl_mend.mend:MEND",
    config=MENDConfig,
    doc="MEND: a trained network turns the edit's gradient factors into the weight change of the last MLP layers (kedsl train mend first).",
    supports_batch=True,
    supports_sequential=True,
    kinds=("edit", "insert", "erase"),
    presets=PRESETS,
    trainer="kedsl_mend.train:MENDTrainer",
)


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [SPEC]
