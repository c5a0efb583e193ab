"""What a method works in and what it returns: :class:`EditContext` and
:class:`EditOutcome`.

A method receives a :class:`~kedsl.model.handle.LoadedModel`, the
:class:`~kedsl.editing.request.EditRequest` s to apply, its resolved parameters and an
:class:`EditContext`. It changes weights **only** through ``context.weights`` (a
:class:`~kedsl.model.journal.WeightJournal`, which keeps the exact originals) and adds
non-weight outcomes (adapters, codebooks, memories) through ``context.attach``. It
returns ``context.outcome(**info)``. The executor can then undo the edit bit-exactly,
store it, and revert it later, the same way for every method.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..model.attachments import Attachment, install, uninstall
from ..model.handle import LoadedModel
from ..model.journal import WeightChange, WeightJournal

log = logging.getLogger(__name__)


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
            model.write_weight(name, ch.before)

    @torch.no_grad()
    def redo(self, model: LoadedModel) -> None:
        for name, ch in self.changes.items():
            model.write_weight(name, ch.after)
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
