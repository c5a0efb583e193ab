"""kedsl_grace: GRACE, a codebook adapter at one layer (Hartvigsen et al. 2023, "Aging with
GRACE: Lifelong Model Editing with Discrete Key-Value Adaptors").

An edit adds one entry per request to a codebook at ``layer``'s MLP output projection:
the key is that module's input at the last prompt token, the value a trained vector that
replaces the module's output from a matching position on, for the positions that predict
the target's tokens, and the radius says how close a later input must come to the key to
match (``eps`` x the key's norm: a relative radius, so one setting works whatever the
scale of a model's activations; the nearest key decides between overlapping entries). Inputs that match
nothing pass through bit-identically; the weights are never changed, so GRACE suits long
sequences of edits. The outcome is an attachment (kind ``grace_codebook``): saved beside
the weights, removed exactly by undo and ``kedsl revert``, never merged into weights.

An entry is trained towards a target: a new answer (``edit``, ``insert``) or an erasure's
refusal (``erase``). The implementation is :mod:`kedsl_grace.grace` (training) and
:mod:`kedsl_grace.codebook` (the shared codebook, its hooks and the attachment); the
parameters are declared in :mod:`kedsl_grace.config`; this module holds only
descriptors and stays importable without torch.
"""
from __future__ import annotations

from kedsl.plugin import MethodSpec, hookimpl

from .config import DEPTH, GRACE_PRESETS, GraceConfig

#: The declared parameters (derived from :class:`GraceConfig`).
GRACE_PARAMS = GraceConfig.params()

GRACE_SPEC = MethodSpec(
    name="grace",
    implementation="kedsl_grace.grace:Grace",
    config=GraceConfig,
    doc="GRACE: a codebook at one MLP output projection; matching inputs get a trained output (an attachment, weights untouched).",
    supports_batch=True,
    supports_sequential=True,
    presets=GRACE_PRESETS,
    depth_defaults=DEPTH,
    attachments=(("grace_codebook", "kedsl_grace.codebook:GraceCodebook"),),
    kinds=("edit", "insert", "erase"),
)


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [GRACE_SPEC]
