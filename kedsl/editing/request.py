"""An edit request: one fact to write into the model, as the executor hands it to a
method. Torch-free, so the language, data readers and ``kedsl check`` can build them."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EditRequest:
    """One fact to write into the model.

    ``prompt`` is the full edit prompt with the subject in it (``subject`` occurs in
    ``prompt`` verbatim); ``target`` is the new answer without a leading space (the
    tokenization rule in :mod:`kedsl.toolkit.tokens` adds it). ``old`` is the current
    answer when known. ``paraphrases`` are further prompts that should give ``target``.
    ``kind`` is one of :data:`kedsl.registry.specs.CHANGE_KINDS`.
    """

    subject: str
    prompt: str
    target: str
    old: str | None = None
    kind: str = "edit"  # "edit" | "insert" | "erase"
    relation: str | None = None
    paraphrases: list[str] = field(default_factory=list)
