"""IKE's parameters, declared once (torch-free: ``kedsl check`` validates scripts against
them), and its presets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kedsl.plugin import Depth, MethodConfig, Preset, param

#: How many demonstrations :data:`kedsl_ike.ike.DEMONSTRATIONS` holds (kept here, torch-free,
#: for the parameter's bound; a test checks the two agree).
N_DEMONSTRATIONS = 4


@dataclass
class IKEConfig(MethodConfig):
    """IKE's configuration; ``layer`` may be ``"auto"`` until a memory resolves it
    (:class:`kedsl_ike.ike.Settings`, the settings a memory keeps)."""

    method: ClassVar[str] = "ike"

    layer: int | str = param(
        "auto",
        "decoder layer whose output, mean-pooled over the prompt and standardised, embeds prompts "
        "for retrieval; auto: an early layer, num_layers // 7 (at least 1)",
        type="int|auto",
        min=0,
    )
    threshold: float = param(
        0.45,
        "cosine similarity a stored fact needs with the prompt to be prepended; below it for "
        "every fact, the prompt is fed unchanged",
        min=-1.0,
        max=1.0,
    )
    top_k: int = param(1, "most stored facts prepended to one prompt (the most similar last)", min=1, max=16)
    demonstrations: int = param(
        2,
        "fixed IKE demonstrations (update, copy, retain, ...) put before the retrieved facts",
        min=0,
        max=N_DEMONSTRATIONS,
    )


PRESETS = (
    Preset(
        model="smollm2-135m",
        values={"layer": 4, "threshold": 0.45, "top_k": 1, "demonstrations": 2},
        measured_by=(
            "SmolLM2-135M-Instruct, ZsRE records 0-499 (498 with a target), cosine of each record's "
            "rephrase and locality prompt to its own edit prompt with this plugin's embedding: layer 4: "
            "rephrase min 0.421, p1 0.476, p5 0.560, median 0.834; locality max 0.325 (median 0.102), "
            "max over all 498 facts 0.465 (p99 0.418); threshold 0.45 retrieves 99.6% of rephrases and "
            "leaves 100% of locality prompts unprefixed (99.8% against all 498 facts). Layers 2, 6, 8 "
            "about as good, 15 clearly worse (rephrase p5 0.247, locality max 0.478). The top-1 fact for "
            "a rephrase has its subject in 99.6% (ZsRE repeats a question with different targets). "
            "demonstrations 0/2/3/4 on records 10-29, single edits, top_k 1 (efficacy/generalization/"
            "efficacy_gen %): 89.7/86.4/60, 94.4/94.9/75, 94.6/84.3/75, 94.6/89.3/75, locality 100 in all; "
            "top_k not swept (in single mode only one fact is stored). Records 0-9 with these values: "
            "91.7/91.7/80, locality 100, fingerprint unchanged"
        ),
    ),
)

#: For models without a measured preset: the same fraction of depth as the measured
#: preset (IKE: retrieval layer 4 of 30 on SmolLM2).
DEPTH = (Depth("layer", 0.13),)
