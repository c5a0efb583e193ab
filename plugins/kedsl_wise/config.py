"""WISE's parameters, declared once (torch-free: ``kedsl check`` validates scripts against
them), and its presets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kedsl.plugin import Depth, MethodConfig, Preset, param


UNRELATED_SOURCES = ("known_facts", "questions")
MARGINS = ("this_edit", "all_edits")


@dataclass
class WiseConfig(MethodConfig):
    """WISE's configuration: where the side memory is, how an edit trains it, how the
    router decides and how shards merge."""

    method: ClassVar[str] = "wise"

    layer: int = param(24, "layer whose MLP output projection gets the side memory", min=0)
    lr: float = param(1.0, "SGD learning rate of the edit's share of the side memory", min=1e-6, max=100.0)
    steps: int = param(70, "maximum training steps per edit", min=1, max=5000)
    nll_tol: float = param(1e-2, "stop once the target tokens' mean NLL is below this and the router separates the edit from the unrelated prompts", min=0.0)
    mask_ratio: float = param(0.2, "share of the side memory's entries one shard trains (knowledge sharding)", min=1e-4, max=1.0)
    shard_edits: int = param(100, "edits written into one shard before the next shard (a new random mask) begins", min=1)
    density: float = param(0.53, "TIES merge of the shards: the share of each shard's entries kept by magnitude (1: no trimming)", min=0.01, max=1.0)
    edit_score: float = param(0.5, "routing margin: an edit's own inputs should reach at least this activation score", min=0.0)
    unrelated_score: float = param(0.1, "routing margin: unrelated inputs should stay at or below this activation score", min=0.0)
    score_gap: float = param(0.3, "routing margin: the lowest edit score should exceed the highest unrelated one by this much", min=0.0)
    routing_weight: float = param(1.0, "weight of the routing loss beside the target NLL", min=0.0)
    act_ratio: float = param(0.88, "the router's threshold: this share of the lowest installed edit's activation score", min=0.0, max=1.0)
    after_answer: bool = param(True, "train the router to stay off at the position after each answer too, so that generation stops routing once the answer is out")
    unrelated: int = param(16, "unrelated prompts that train the router to stay off", min=1, max=1000)
    unrelated_from: str = param("known_facts", "where the unrelated prompts come from: 'known_facts' (kedsl's 90 known-fact prompts, one seeded draw that every edit shares) or 'questions' (the 1,000 Natural Questions shipped with kedsl from a zsRE training file, a new seeded draw for each edit)", type="str", choices=UNRELATED_SOURCES)
    margin_against: str = param("this_edit", "what the unrelated prompts' scores must stay below while an edit trains: 'this_edit' (act_ratio x this edit's lowest score) or 'all_edits' (the router's threshold once the edit is installed: act_ratio x the lowest score of every edit in the memory)", type="str", choices=MARGINS)
    seed: int | None = param(None, "seed of the shards' masks and the unrelated prompts' choice (default: the run's seed)", min=0)


PRESETS: tuple[Preset, ...] = ()

#: For models without a measured preset: WISE's LLaMA-2-7B setting edits layer 27 of 32.
DEPTH = (Depth("layer", 0.84),)
