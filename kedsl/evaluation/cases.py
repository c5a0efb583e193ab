"""Evaluation cases: the prompts by which one edit is judged (metrics.md). Torch-free.

The executor builds one :class:`EvalCase` per edit from its request and expectations;
the benchmark readers (:mod:`kedsl.evaluation.datasets`) build them from benchmark
records. Metrics (:mod:`kedsl.evaluation.metric`) read them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..editing.request import EditRequest

# A (prompt, answer) pair. answer None (locality only) means "whatever the unedited model
# says": the baseline takes the unedited model's greedy continuation as the answer.
Pair = tuple[str, "str | None"]


@dataclass
class EvalCase:
    """The prompts by which one edit is judged (metrics.md)."""

    subject: str
    target: str  # the new target
    old: str | None = None  # the true/old target when known
    rewrite: list[Pair] = field(default_factory=list)  # edit prompt(s) -> target
    paraphrase: list[Pair] = field(default_factory=list)  # rephrasings -> target
    portability: dict[str, list[Pair]] = field(default_factory=dict)  # key -> pairs
    locality: list[Pair] = field(default_factory=list)  # unrelated prompts -> their answers
    # CounterFact: neighborhood prompts whose true answer is `old`-like (NS), and
    # generation prompts for fluency; empty elsewhere.
    neighborhood: list[Pair] = field(default_factory=list)
    generation: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # record id, relation, ...

    @classmethod
    def from_request(cls, req: "EditRequest", **fields: Any) -> "EvalCase":
        """The case an edit request is judged by: its prompt (rewrite) and paraphrases,
        both with the new target; ``fields`` add locality, portability, ..."""
        return cls(
            subject=req.subject,
            target=req.target,
            old=req.old,
            rewrite=[(req.prompt, req.target)],
            paraphrase=[(p, req.target) for p in req.paraphrases],
            **fields,
        )
