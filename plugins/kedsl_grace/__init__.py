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

The implementation is :mod:`kedsl_grace.grace` (training) and :mod:`kedsl_grace.codebook`
(the shared codebook, its hooks and the attachment); this module holds only descriptors
and stays importable without torch.
"""
from __future__ import annotations

from kedsl.hookspecs import hookimpl
from kedsl.params import Param, Preset
from kedsl.specs import MethodSpec

GRACE_PARAMS = (
    Param("layer", "int", 23, "layer whose MLP output projection holds the codebook", min=0),
    Param(
        "eps",
        "float",
        0.15,
        "deferral radius relative to the key's norm: a later input matches an entry when its "
        "distance to the entry's key is at most eps x |key| (and that key is its nearest)",
        min=1e-6,
        max=10.0,
    ),
    Param("lr", "float", 1.0, "Adam learning rate of the entries' values", min=1e-6, max=100.0),
    Param("steps", "int", 100, "maximum optimisation steps of the values", min=1, max=5000),
    Param("nll_tol", "float", 1e-2, "stop once the target tokens' mean NLL is below this", min=0.0),
)

GRACE_PRESETS = (
    Preset(
        family="llama",
        values={"layer": 23, "eps": 0.15, "lr": 1.0},
        measured_by=(
            "SmolLM2-135M-Instruct, ZsRE records 0-149 (train part). Keys (down_proj input at the last prompt "
            "token), distances relative to the key's norm, layer 23: nearest key of another record 1st/5th/50th "
            "percentile 0.15/0.19/0.40; the record's own paraphrase median 0.40 (key geometry separates templates "
            "more than subjects at every layer tried: 10, 15, 20, 23, 25, 26, 28; 23 separated paraphrases from "
            "other records' prompts a little better than 20/26/28, 10 had near-collisions with locality prompts); "
            "every position of every locality prompt + answer >= 0.62; non-final positions of other prompts >= 0.39; "
            "target positions >= 0.98. eps 0.15 keeps other records' prompts outside the radius for ~99% of keys "
            "(paraphrases too: GRACE trades generalization for specificity). lr on records 0-9, nll_tol 0.01: "
            "0.1 did not converge in 100 steps, 0.5 took 39 steps on average, 1.0 19, 2.0 15, efficacy 1.0 for all. "
            "kedsl bench --method grace --limit 5 (records 0-4, single): efficacy 1.00, generalization 0.18 "
            "(= pre-edit), locality 1.00, efficacy_gen 1.00; --mode sequential --limit 10: efficacy 1.00, "
            "generalization 0.24, locality 1.00, efficacy_gen 1.00"
        ),
    ),
)

GRACE_SPEC = MethodSpec(
    name="grace",
    implementation="kedsl_grace.grace:Grace",
    params=GRACE_PARAMS,
    doc="GRACE: a codebook at one MLP output projection; matching inputs get a trained output (an attachment, weights untouched).",
    supports_batch=True,
    supports_sequential=True,
    presets=GRACE_PRESETS,
    attachments=(("grace_codebook", "kedsl_grace.codebook:GraceCodebook"),),
)


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [GRACE_SPEC]
