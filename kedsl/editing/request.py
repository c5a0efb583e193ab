"""An edit request: one fact to write into the model, as the executor hands it to a
method. Torch-free, so the language, data readers and ``kedsl check`` can build them."""
from __future__ import annotations

from dataclasses import dataclass, field

#: What an erased fact is answered with unless a script (``refusal "TEXT"``) or a data
#: file gives another: the Sanitation protocol of KnowEdit.
DEFAULT_REFUSAL = "I don't know."


@dataclass
class EditRequest:
    """One fact to write into the model.

    ``prompt`` is the full edit prompt with the subject in it (``subject`` occurs in
    ``prompt`` verbatim); ``target`` is the new answer without a leading space (the
    tokenization rule in :mod:`kedsl.toolkit.tokens` adds it). ``old`` is the current
    answer when known. ``paraphrases`` are further prompts that should give ``target``.
    ``kind`` is one of :data:`kedsl.registry.specs.CHANGE_KINDS`: ``insert`` is an edit
    with no old answer; ``erase`` is an edit towards a refusal (``target`` is the refusal,
    :data:`DEFAULT_REFUSAL` unless the script gives another) away from ``old``.
    """

    subject: str
    prompt: str
    target: str
    old: str | None = None
    kind: str = "edit"  # "edit" | "insert" | "erase"
    relation: str | None = None
    paraphrases: list[str] = field(default_factory=list)
