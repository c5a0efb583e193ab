"""The base class of a method's implementation (the class a :class:`MethodSpec` names).
Torch-free: the types it mentions are only annotations."""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import UsageError

if TYPE_CHECKING:
    from ..registry.specs import MethodSpec
    from ..model.handle import LoadedModel
    from .outcome import EditContext, EditOutcome
    from .request import EditRequest


class Method(abc.ABC):
    """An editing method. The executor builds one instance per run (no-argument
    constructor) and calls :meth:`apply` for each edit, or once per ``batch`` block when
    the spec says ``supports_batch``.

    ``params`` are resolved: every declared parameter, defaults overlaid by the preset of
    the model's family and by what the script gave; the method turns them into its
    configuration with ``MyConfig.from_params(params, context.seed)``. A request of a
    kind the spec does not declare, or a batch the method cannot take, is refused with a
    :class:`~kedsl.errors.UsageError` (a message and a hint for the user)."""

    @abc.abstractmethod
    def apply(self, model: LoadedModel, requests: list[EditRequest], params: dict[str, Any], context: EditContext) -> EditOutcome:
        """Write ``requests`` into ``model``: weights only through ``context.weights``,
        other outcomes only through ``context.attach``; return ``context.outcome(**info)``
        (``info``: JSON-able facts about the edit for the audit record)."""

    def touches(self, model: LoadedModel, params: dict[str, Any]) -> list[str] | None:
        """The names of the parameters an edit with ``params`` (resolved) will change, for
        ``kedsl plan``; ``[]`` when it changes none (attachments only), None when it
        cannot say beforehand."""
        return None


def refuse_unsupported_requests(spec: MethodSpec, requests: Sequence[EditRequest]) -> None:
    """A request of a kind the method does not declare (``MethodSpec.kinds``), or one
    without a target (an erasure's target is its refusal), is a usage error raised before
    the method runs: the one place that enforces this, for the executor and the benchmark
    alike."""
    for r in requests:
        if not r.target.strip():
            raise UsageError(
                f"the {r.kind} of {r.subject!r} has no target",
                "an edit or insert needs a new answer; an erase answers with its refusal (\"I don't know.\" by default)",
            )
        if r.kind not in spec.kinds:
            can = " or ".join(spec.kinds)
            raise UsageError(
                f"{spec.name} cannot {r.kind} facts, only {can} them ({r.subject!r})",
                f"use a method whose plugin declares `{r.kind}` among the kinds of change it accepts",
            )
