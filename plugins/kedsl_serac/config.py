"""SERAC's parameters, declared once (torch-free): the method's (which trained editor) and
the editor's training hyper-parameters (``kedsl train serac --param NAME=VALUE``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kedsl.plugin import MethodConfig, param


@dataclass
class SERACConfig(MethodConfig):
    """The ``serac`` method: edits go into a memory a trained scope classifier reads."""

    method: ClassVar[str] = "serac"

    editor: str = param("", "the folder of a SERAC editor trained for this model (kedsl train serac ... --out DIR)")
    margin: float = param(0.0, "added to the scope classifier's decision (> 0: fewer prompts count as in scope)", min=-10.0, max=10.0)


@dataclass
class SERACTrainConfig(MethodConfig):
    """The SERAC editor's hyper-parameters (Mitchell et al. 2022, "Memory-Based Model Editing at Scale")."""

    method: ClassVar[str] = "serac"

    layer: int | None = param(None, "decoder layer whose mean-pooled output embeds prompts for the scope classifier (default: num_layers // 7)", min=0)
    projection: int = param(256, "width of the scope classifier's learned projection of the prompt embeddings", min=1, max=4096)
    lora_rank: int = param(8, "rank of the counterfactual model's adapter", min=1, max=256)
    lora_layers: list[int] | None = param(None, "layers whose MLP output projection gets the adapter (default: every layer)", type="layers", min=0)
    scope_weight: float = param(1.0, "weight of the scope classifier's loss", min=0.0)
    counterfactual_weight: float = param(1.0, "weight of the counterfactual model's loss (the target's NLL given the edit in context)", min=0.0)
    seed: int | None = param(None, "seed of the initialisation (default: the run's)", min=0)
