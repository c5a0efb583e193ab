"""The contract between the executor/benchmark and metric plugins.

An :class:`EvalCase` holds everything a metric may look at for one edit. A metric
implementation (named by a :class:`kedsl.specs.MetricSpec`) provides::

    class MyMetric:
        def baseline(self, model, cases) -> list[Any]:      # only if spec.needs_baseline
            ...                                              # measured on the unedited model
        def measure(self, model, cases, baselines) -> list[MetricResult]:
            ...

Both take lists so implementations batch their forward passes across cases.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .editing import EditRequest

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


@dataclass
class MetricResult:
    """One metric's value for one case; ``value`` None when the case has no such prompts."""

    value: float | None
    n: int = 0  # how many prompts the value averages
    details: dict[str, Any] = field(default_factory=dict)


class Metric(Protocol):
    def measure(self, model: Any, cases: list[EvalCase], baselines: list[Any] | None) -> list[MetricResult]: ...
