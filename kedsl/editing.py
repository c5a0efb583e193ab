"""The contract between the executor and method plugins.

A method receives a :class:`LoadedModel`, the :class:`EditRequest` s to apply, its
resolved parameters and an :class:`EditContext`. It changes weights **only** through
``context.weights`` (a :class:`WeightJournal`, which keeps the exact originals) and adds
non-weight outcomes (adapters, codebooks, memories) through ``context.attach``. It
returns ``context.outcome(**info)``. The executor can then undo the edit bit-exactly,
store it, and revert it later, the same way for every method.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from .attachments import Attachment, install, uninstall  # Attachment re-exported for methods
from .model.handle import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class EditRequest:
    """One fact to write into the model.

    ``prompt`` is the full edit prompt with the subject in it (``subject`` occurs in
    ``prompt`` verbatim); ``target`` is the new answer without a leading space (the
    tokenization rule in :mod:`kedsl.toolkit.tokens` adds it). ``old`` is the current
    answer when known. ``paraphrases`` are further prompts that should give ``target``.
    """

    subject: str
    prompt: str
    target: str
    old: str | None = None
    kind: str = "edit"  # "edit" | "insert" | "erase"
    relation: str | None = None
    paraphrases: list[str] = field(default_factory=list)


@dataclass
class WeightChange:
    """A parameter's exact value before and after an edit (CPU copies)."""

    name: str
    before: torch.Tensor
    after: torch.Tensor

    @property
    def delta(self) -> torch.Tensor:
        return self.after.float() - self.before.float()


class WeightJournal:
    """Applies weight changes to a model and remembers the originals for exact undo."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._before: dict[str, torch.Tensor] = {}

    def _param(self, name: str) -> torch.nn.Parameter:
        return self.model.get_parameter(name)

    def _remember(self, name: str) -> torch.nn.Parameter:
        p = self._param(name)
        if name not in self._before:
            self._before[name] = p.detach().to("cpu", copy=True)
        return p

    @torch.no_grad()
    def add_(self, name: str, delta: torch.Tensor) -> None:
        """``W += delta`` (delta in W's shape; cast to W's dtype and device)."""
        p = self._remember(name)
        p.add_(delta.to(device=p.device, dtype=p.dtype))

    @torch.no_grad()
    def set_(self, name: str, value: torch.Tensor) -> None:
        p = self._remember(name)
        p.copy_(value.to(device=p.device, dtype=p.dtype))

    def touched(self) -> list[str]:
        return list(self._before)

    @torch.no_grad()
    def rollback(self) -> None:
        """Restore every touched parameter bit-exactly."""
        for name, before in self._before.items():
            self._param(name).copy_(before)
        self._before.clear()

    def changes(self) -> dict[str, WeightChange]:
        return {
            name: WeightChange(name, before, self._param(name).detach().to("cpu", copy=True))
            for name, before in self._before.items()
        }


@dataclass
class EditOutcome:
    """What an edit changed: exact weight changes and attachments, plus method info."""

    changes: dict[str, WeightChange] = field(default_factory=dict)
    attachments: list[Any] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def undo(self, model: LoadedModel) -> None:
        """Restore the touched weights bit-exactly and remove attachments."""
        for a in reversed(self.attachments):
            uninstall(model, a)
        for name, ch in self.changes.items():
            model.parameter(name).copy_(ch.before)

    @torch.no_grad()
    def redo(self, model: LoadedModel) -> None:
        for name, ch in self.changes.items():
            model.parameter(name).copy_(ch.after)
        for a in self.attachments:
            install(model, a)


@dataclass
class EditContext:
    """What the executor gives a method besides the model and requests."""

    weights: WeightJournal
    cache_dir: Path
    seed: int = 0
    # Per-method state that must survive across sequential edits (e.g. AlphaEdit's
    # accumulated keys); the executor stores it with the run.
    state: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None
    attachments: list[Any] = field(default_factory=list)

    def attach(self, model: LoadedModel, attachment: Attachment) -> None:
        """Install ``attachment`` as (part of) this edit's outcome."""
        install(model, attachment)
        self.attachments.append(attachment)

    def outcome(self, **info: Any) -> EditOutcome:
        return EditOutcome(changes=self.weights.changes(), attachments=list(self.attachments), info=info)

    def rollback(self, model: LoadedModel) -> None:
        for a in reversed(self.attachments):
            uninstall(model, a)
        self.attachments.clear()
        self.weights.rollback()


class EditMethod(Protocol):
    """What a method plugin's implementation class provides.

    Optionally it also defines ``touches(model, params) -> list[str]``: the names of the
    parameters an edit with ``params`` (resolved) will change; ``kedsl plan`` shows them.
    """

    def apply(
        self,
        model: LoadedModel,
        requests: list[EditRequest],
        params: dict[str, Any],
        context: EditContext,
    ) -> EditOutcome: ...
