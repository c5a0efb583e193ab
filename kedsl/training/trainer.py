"""What a trained editor's method provides to ``kedsl train``: a :class:`Trainer` (named by
``MethodSpec.trainer``), and the examples it learns from.

The training loop (:mod:`kedsl.training.loop`) is the core's: data order, optimisation,
validation, early stopping, budgets, checkpoints and their resumption, the saved editor and
its provenance record are written once there. A method writes only what is its own: which
tensors it trains (``parameters``), which it keeps without training (``buffers``, such as
running statistics), the loss of a batch, and the validation score.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from ..model.handle import LoadedModel
    from ..registry.params import MethodConfig


@dataclass
class TrainingExample:
    """One edit to learn from: the edit prompt and target, prompts that should give the
    target too (paraphrases), and prompts that should keep the base model's answers
    (locality: prompt and answer)."""

    subject: str
    prompt: str
    target: str
    paraphrases: list[str] = field(default_factory=list)
    locality: list[tuple[str, str]] = field(default_factory=list)
    index: int = 0  # the record's index in its file


class Trainer(abc.ABC):
    """A trainable editor of one method. ``config`` is its hyper-parameters' class (a
    :class:`~kedsl.registry.params.MethodConfig`: ``kedsl train --param NAME=VALUE`` is
    validated against it). The loop calls :meth:`loss` once per step and
    :meth:`validate` every ``val_every`` steps; every tensor in :meth:`parameters` is
    optimised with Adam (at the loop's learning rate unless :meth:`learning_rates` says
    otherwise), and every tensor of :meth:`parameters` and :meth:`buffers` is saved in
    checkpoints and in the editor file, so resuming restores the trainer exactly."""

    config: ClassVar[type[MethodConfig]]

    def __init__(self, model: LoadedModel, hparams: Any) -> None:
        self.model = model
        self.hparams = hparams

    @abc.abstractmethod
    def parameters(self) -> dict[str, torch.nn.Parameter]:
        """The trained tensors, by a stable name."""

    def buffers(self) -> dict[str, torch.Tensor]:
        """Tensors saved with the editor that the optimiser does not touch."""
        return {}

    def learning_rates(self, lr: float) -> dict[str, float]:
        """Learning rates of the trained tensors, by name, where they differ from the
        loop's ``lr`` (``kedsl train --lr``); the rest train at ``lr``. MEND's step sizes,
        for instance, are scalars of another scale than its network's weights."""
        return {}

    @abc.abstractmethod
    def loss(self, batch: list[TrainingExample]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of ``batch`` (differentiable in :meth:`parameters`) and the
        numbers to show and record (e.g. the edit loss and the locality term)."""

    @abc.abstractmethod
    def validate(self, examples: list[TrainingExample]) -> dict[str, float]:
        """Validation numbers; ``score`` (higher is better) drives early stopping and the
        choice of the saved editor."""

    def describe(self) -> dict[str, Any]:
        """What the editor's JSON records about the trainer beyond its hyper-parameters
        (e.g. which weights it edits)."""
        return {}
