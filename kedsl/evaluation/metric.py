"""The contract between the executor/benchmark and metric plugins. Torch-free.

A metric implementation (named by a :class:`~kedsl.registry.specs.MetricSpec`) subclasses
:class:`Metric`::

    class MyMetric(Metric):
        def baseline(self, model, cases) -> list[Any]:      # only if spec.needs_baseline
            ...                                              # measured on the unedited model
        def measure(self, model, cases, baselines) -> list[MetricResult]:
            ...

Both take lists of :class:`~kedsl.evaluation.cases.EvalCase` so implementations batch
their forward passes across cases.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cases import EvalCase


@dataclass
class MetricResult:
    """One metric's value for one case; ``value`` None when the case has no such prompts."""

    value: float | None
    n: int = 0  # how many prompts the value averages
    details: dict[str, Any] = field(default_factory=dict)


class Metric(abc.ABC):
    """A metric: one :class:`MetricResult` per case."""

    @abc.abstractmethod
    def measure(self, model: Any, cases: list[EvalCase], baselines: list[Any] | None) -> list[MetricResult]:
        """The value for each case on ``model`` (edited); ``baselines`` are what
        :meth:`baseline` returned for the same cases on the unedited model, or None
        when the spec does not say ``needs_baseline``."""

    def baseline(self, model: Any, cases: list[EvalCase]) -> list[Any]:
        """What :meth:`measure` compares against, measured on the unedited model (only
        called when the spec says ``needs_baseline``)."""
        raise NotImplementedError(f"{type(self).__name__} declares needs_baseline but defines no baseline()")
