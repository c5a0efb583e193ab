"""GRACE's parameters, declared once (torch-free: ``kedsl check`` validates scripts against
them), and its presets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kedsl.plugin import Depth, MethodConfig, Preset, param


@dataclass
class GraceConfig(MethodConfig):
    """GRACE's configuration."""

    method: ClassVar[str] = "grace"

    layer: int = param(23, "layer whose MLP output projection holds the codebook", min=0)
    eps: float = param(
        0.15,
        "deferral radius relative to the key's norm: a later input matches an entry when its "
        "distance to the entry's key is at most eps x |key| (and that key is its nearest)",
        min=1e-6,
        max=10.0,
    )
    lr: float = param(1.0, "Adam learning rate of the entries' values", min=1e-6, max=100.0)
    steps: int = param(100, "maximum optimisation steps of the values", min=1, max=5000)
    nll_tol: float = param(1e-2, "stop once the target tokens' mean NLL is below this", min=0.0)


GRACE_PRESETS = (
    Preset(
        model="smollm2-135m",
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

#: For models without a measured preset: the same fraction of depth as the measured
#: preset (GRACE: layer 23 of 30 on SmolLM2).
DEPTH = (Depth("layer", 0.77),)
