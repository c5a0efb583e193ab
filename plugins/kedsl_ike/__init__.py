"""kedsl_ike: In-Context Knowledge Editing (Zheng et al. 2023, "Can We Edit Factual
Knowledge by In-Context Learning?").

IKE changes no weight: an edit becomes an *in-context memory* (an ``ike_memory``
attachment holding the edited facts). For every prompt the model is fed, the memory
retrieves the stored facts most similar to the prompt and prepends them in IKE's format
("New Fact: ...", after a few fixed copy/update/retain demonstrations); a prompt that
resembles no stored fact closely enough passes through unchanged, so its scores are
bit-identical to the unedited model's. Similarity is computed with the edited model
itself (mean-pooled hidden states of one layer, cosine), so nothing is downloaded.
Sequential edits add memories that retrieve as one pool. A memory states the target as a
new fact: a new answer (``edit``, ``insert``) or an erasure's refusal. The implementation is :mod:`kedsl_ike.ike`, the
parameters are declared in :mod:`kedsl_ike.config`; this module holds only descriptors
and stays importable without torch.
"""
from __future__ import annotations

from kedsl.plugin import MethodSpec, hookimpl

from .config import DEPTH, N_DEMONSTRATIONS, PRESETS, IKEConfig

__all__ = ["IKEConfig", "N_DEMONSTRATIONS", "PARAMS", "PRESETS", "SPEC", "register_methods"]

#: The declared parameters (derived from :class:`IKEConfig`).
PARAMS = IKEConfig.params()

SPEC = MethodSpec(
    name="ike",
    implementation="kedsl_ike.ike:IKE",
    config=IKEConfig,
    doc="In-context knowledge editing: no weight changes; edited facts are retrieved by similarity and prepended to prompts.",
    supports_batch=True,
    supports_sequential=True,
    presets=PRESETS,
    depth_defaults=DEPTH,
    attachments=(("ike_memory", "kedsl_ike.ike:IKEMemory"),),
    kinds=("edit", "insert", "erase"),
)


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [SPEC]
