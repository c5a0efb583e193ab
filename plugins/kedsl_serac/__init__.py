"""kedsl_serac: SERAC, Semi-parametric Editing with a Retrieval-Augmented Counterfactual
model (Mitchell et al. 2022, "Memory-Based Model Editing at Scale").

Edits are not written into the weights: they go into an edit memory (an attachment,
``serac_memory``, saved, loaded and reverted like IKE's). For every prompt the model is
fed, a scope classifier decides whether it falls under a stored edit; a prompt in scope
is answered by the counterfactual model, which sees the edit in its context, and every
other prompt by the base model, bit-identically. Here the scope classifier is a learned
projection of the base model's own prompt embeddings (:mod:`kedsl.toolkit.embeddings`),
and the counterfactual model is the base model with a trained low-rank adapter that is
active only on in-scope prompts (:mod:`kedsl_serac.counterfactual`). Both are trained
with ``kedsl train serac`` (:mod:`kedsl_serac.train`) for one base model; an edit then
takes ``using serac(editor="DIR")`` (:mod:`kedsl_serac.memory`). This module holds only
descriptors and stays importable without torch.
"""
from __future__ import annotations

from kedsl.plugin import MethodSpec, hookimpl

from .config import SERACConfig, SERACTrainConfig

__all__ = ["SERACConfig", "SERACTrainConfig", "SPEC", "register_methods"]

SPEC = MethodSpec(
    name="serac",
    implementation="kedsl_serac.memory:SERAC",
    config=SERACConfig,
    doc="SERAC: edits in a memory; a trained scope classifier sends in-scope prompts to a counterfactual model (an attachment, weights untouched).",
    supports_batch=True,
    supports_sequential=True,
    kinds=("edit", "insert", "erase"),
    attachments=(("serac_memory", "kedsl_serac.memory:SERACMemory"),),
    trainer="kedsl_serac.train:SERACTrainer",
)


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [SPEC]
