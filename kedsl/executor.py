"""The executor: runs a checked script's edits against a loaded model.

For each edit (or batch): resolve parameters -> measure the baselines its expectations
need on the unedited model -> apply the method -> measure the expectations -> keep, roll
back (bit-exact, through the edit's outcome) or abort -> record in the provenance store.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .cache import stats_dir
from .editing.method import refuse_unsupported_requests
from .editing.outcome import EditContext, EditOutcome
from .editing.request import EditRequest
from .errors import UsageError
from .evaluation.cases import EvalCase
from .evaluation.metric import MetricResult
from .lang import ast
from .lang.checker import ON_FAIL_POLICIES
from .lang.data import DataSource
from .model.handle import LoadedModel
from .model.journal import WeightJournal
from .records import jsonable
from .registry import Registry
from .registry.presets import params_for
from .registry.specs import MetricSpec
from .toolkit.generation import generate

log = logging.getLogger(__name__)


@dataclass
class PlannedEdit:
    """One edit as the executor runs it: the request, its method and expectations; for a
    row of a data file (``edits from``), the row (from 1), the file and its locality prompts."""

    request: EditRequest
    method: str
    given_params: dict[str, Any]
    expects: list[ast.Expect]
    batch: int | None = None
    source_line: int = 0
    row: int | None = None
    source: DataSource | None = None
    locality: list[str] = field(default_factory=list)


@dataclass
class ExpectationResult:
    metric: str
    value: float | None
    op: str | None
    threshold: float | None
    passed: bool
    n: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": self.value,
            "op": self.op,
            "threshold": self.threshold,
            "passed": int(self.passed),
            "n": self.n,
            "details": self.details,
        }


@dataclass
class EditReport:
    index: int
    request: EditRequest
    method: str
    params: dict[str, Any]
    status: str  # applied | rolled_back | failed | skipped
    seconds: float = 0.0
    says_now: str | None = None
    expectations: list[ExpectationResult] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    outcome: EditOutcome | None = None
    edit_id: str | None = None
    error: str | None = None
    row: int | None = None  # the row of a data file, for an edit of `edits from`
    source: DataSource | None = None
    source_line: int = 0  # the script line of the statement

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.expectations)


@dataclass
class RunReport:
    run_id: str | None
    edits: list[EditReport]
    fingerprint_before: str
    fingerprint_after: str | None = None
    saved_to: Path | None = None
    status: str = "ok"  # ok | expectations_failed | aborted

    @property
    def failed_expectations(self) -> int:
        return sum(1 for e in self.edits for x in e.expectations if not x.passed)


class Reporter(Protocol):
    """Progress callbacks; the CLI prints, the library only logs. ``edit_measured`` comes
    when an edit's expectations are measured (in a batch, one by one after the update);
    ``method_progress`` (optional) carries what a method says while it works, such as a
    1,000-fact batch's target search."""

    def edit_started(self, index: int, total: int, edit: PlannedEdit) -> None: ...

    def edit_measured(self, index: int, total: int, edit: PlannedEdit) -> None: ...

    def method_progress(self, message: str) -> None: ...

    def edit_finished(self, report: EditReport, total: int) -> None: ...


class _LogReporter:
    def edit_started(self, index: int, total: int, edit: PlannedEdit) -> None:
        log.info("edit %d/%d: %s -> %s using %s", index + 1, total, edit.request.subject, edit.request.target, edit.method)

    def edit_measured(self, index: int, total: int, edit: PlannedEdit) -> None:
        log.debug("edit %d/%d measured", index + 1, total)

    def method_progress(self, message: str) -> None:
        log.debug("%s", message)

    def edit_finished(self, report: EditReport, total: int) -> None:
        log.info("edit %d/%d %s in %.1fs", report.index + 1, total, report.status, report.seconds)


class Executor:
    """Applies planned edits to ``model`` and measures their expectations."""

    def __init__(
        self,
        model: LoadedModel,
        registry: Registry,
        *,
        on_fail: str = "rollback",
        seed: int = 0,
        cache_dir: Path | None = None,
        store: Any = None,
        run_id: str | None = None,
        reporter: Reporter | None = None,
        says_now_tokens: int = 8,
    ):
        if on_fail not in ON_FAIL_POLICIES:
            raise UsageError(f"unknown on_fail policy `{on_fail}`", "use rollback, keep or abort")
        self.model = model
        self.registry = registry
        self.on_fail = on_fail
        self.seed = seed
        if cache_dir is None:
            cache_dir = stats_dir()
        self.cache_dir = cache_dir
        self.store = store
        self.run_id = run_id
        self.reporter = reporter or _LogReporter()
        # optional: a reporter written before `edit_measured` existed keeps working
        self._edit_measured = getattr(self.reporter, "edit_measured", None)
        self._method_progress = getattr(self.reporter, "method_progress", None)
        self.says_now_tokens = says_now_tokens
        self.method_state = model.method_state  # travels with the model (saved with it)
        self._metric_impls: dict[str, Any] = {}
        self._method_impls: dict[str, Any] = {}

    # -- public ------------------------------------------------------------------
    def run(self, edits: list[PlannedEdit]) -> list[EditReport]:
        """Run every edit (batches together); returns one report per edit."""
        reports: list[EditReport] = []
        units = _group_units(edits)
        total = len(edits)
        aborted = False
        for unit in units:
            if aborted:
                for e in unit:
                    reports.append(EditReport(len(reports), e.request, e.method, {}, "skipped", row=e.row, source=e.source,
                                              source_line=e.source_line))  # fmt: skip
                continue
            unit_reports = self._run_unit(unit, start_index=len(reports), total=total)
            reports.extend(unit_reports)
            if self.on_fail == "abort" and not all(r.passed for r in unit_reports):
                log.warning("an expectation failed and on_fail is abort: stopping the run")
                aborted = True
        return reports

    # -- one unit: a single edit or a batch ----------------------------------------
    def _run_unit(self, unit: list[PlannedEdit], start_index: int, total: int) -> list[EditReport]:
        first = unit[0]
        spec = self.registry.method(first.method)
        if len(unit) > 1 and not spec.supports_batch:
            raise UsageError(f"method `{spec.name}` does not support batch edits", "use a method that does, e.g. memit")
        refuse_unsupported_requests(spec, [e.request for e in unit])
        params = params_for(spec, first.given_params, self.model).params
        for i, e in enumerate(unit):
            self.reporter.edit_started(start_index + i, total, e)

        cases = [self._eval_case(e) for e in unit]
        # Baselines on the unedited model, before the edit.
        baselines: list[dict[int, Any]] = []
        for e, case in zip(unit, cases):
            b: dict[int, Any] = {}
            for k, exp in enumerate(e.expects):
                mspec = self.registry.metric(exp.metric)
                if mspec.needs_baseline:
                    b[k] = self._metric(mspec).baseline(self.model, [case_for(mspec, case, exp)])[0]
            baselines.append(b)

        method = self._method(spec.name)
        context = EditContext(
            weights=WeightJournal(self.model.model),
            cache_dir=self.cache_dir,
            seed=self.seed,
            state=self.method_state.setdefault(spec.name, {}),
            progress=self._method_progress,
        )
        # Methods replace state entries rather than mutating them, so a shallow copy is a
        # snapshot: a rolled-back edit leaves no trace in the state either.
        state_before = dict(context.state)
        torch.manual_seed(self.seed)
        t0 = time.perf_counter()
        try:
            outcome = method.apply(self.model, [e.request for e in unit], params, context)
        except BaseException:  # a failed method leaves no trace in the model
            context.rollback(self.model)
            _restore(context.state, state_before)
            raise
        seconds = time.perf_counter() - t0
        if not isinstance(outcome, EditOutcome):
            raise TypeError(f"method `{spec.name}` returned {type(outcome).__name__}, expected EditOutcome")

        reports = []
        for i, (e, case) in enumerate(zip(unit, cases)):
            results = [
                self._measure(exp, case, baselines[i].get(k)) for k, exp in enumerate(e.expects)
            ]
            if self._edit_measured is not None:
                self._edit_measured(start_index + i, total, e)
            reports.append(
                EditReport(
                    index=start_index + i,
                    request=e.request,
                    method=spec.name,
                    params=params,
                    status="applied",
                    seconds=seconds / len(unit),
                    expectations=results,
                    info=jsonable(outcome.info),
                    outcome=outcome,
                    row=e.row,
                    source=e.source,
                    source_line=e.source_line,
                )
            )
        unit_passed = all(r.passed for r in reports)
        if not unit_passed and self.on_fail in ("rollback", "abort"):
            outcome.undo(self.model)
            _restore(context.state, state_before)
            for r in reports:
                r.status = "rolled_back"
        for r in reports:
            if r.row is None:  # rows of a data file are summarised, not shown one by one
                r.says_now = self._says_now(r.request.prompt)
            self._record(r)
            self.reporter.edit_finished(r, total)
        return reports

    # -- expectations --------------------------------------------------------------
    def _eval_case(self, e: PlannedEdit) -> EvalCase:
        # A row's locality prompts should keep the unedited model's answers (None: the baseline's).
        return EvalCase.from_request(e.request, generation=[e.request.prompt], locality=[(p, None) for p in e.locality],
                                     meta={"relation": e.request.relation})  # fmt: skip

    def _measure(self, exp: ast.Expect, case: EvalCase, baseline: Any) -> ExpectationResult:
        mspec = self.registry.metric(exp.metric)
        c = case_for(mspec, case, exp)
        res: MetricResult = self._metric(mspec).measure(self.model, [c], [baseline] if mspec.needs_baseline else None)[0]
        op, threshold = expectation_threshold(mspec, exp, res)
        if res.value is None:
            passed = False
            res.details.setdefault("reason", f"no prompts to measure {exp.metric} on")
        elif op is None:
            passed = True  # reported only
        else:
            passed = compare(res.value, op, threshold)
        return ExpectationResult(exp.metric, res.value, op, threshold, passed, res.n, jsonable(res.details))

    def _metric(self, spec: MetricSpec) -> Any:
        if spec.name not in self._metric_impls:
            self._metric_impls[spec.name] = spec.load()
        return self._metric_impls[spec.name]

    def _method(self, name: str) -> Any:
        if name not in self._method_impls:
            self._method_impls[name] = self.registry.method(name).load()
        return self._method_impls[name]

    def _says_now(self, prompt: str) -> str | None:
        if self.says_now_tokens <= 0:
            return None
        return generate(self.model, [prompt], max_new_tokens=self.says_now_tokens)[0]

    def _record(self, r: EditReport) -> None:
        if self.store is None or self.run_id is None:
            return
        sha = self.store.save_outcome(r.outcome.changes) if (r.outcome and r.status == "applied") else None
        r.edit_id = self.store.record_edit(
            run_id=self.run_id,
            seq=r.index,
            subject=r.request.subject,
            request=jsonable(r.request.__dict__),
            method=r.method,
            params=jsonable(r.params),
            status=r.status,
            seconds=r.seconds,
            info=r.info,
            outcome_sha256=sha,
            metrics=[x.as_record() for x in r.expectations],
            error=r.error,
            attachments=[{**a.describe(), "blob": self.store.save_attachment(a)} for a in r.outcome.attachments]
            if (r.outcome and r.status == "applied")
            else None,
            data_sha256=r.source.sha256 if r.source is not None else None,
            data_row=r.row,
        )


def case_for(spec: MetricSpec, case: EvalCase, exp: ast.Expect) -> EvalCase:
    """The case a metric sees for one `expect`: its own prompts replace the field the
    metric reads (``MetricSpec.prompts_field``)."""
    if not exp.prompts:
        return case
    from dataclasses import replace

    pairs = [(p.prompt, None if p.unchanged else (p.answer if p.answer is not None else case.target)) for p in exp.prompts]
    f = spec.prompts_field
    if f == "portability":
        return replace(case, portability={"script": pairs})
    if f == "generation":
        return replace(case, generation=[p for p, _ in pairs])
    if f in ("rewrite", "paraphrase", "locality", "neighborhood"):
        return replace(case, **{f: pairs})
    raise ValueError(f"metric {spec.name}: unknown prompts_field {f!r}")


def expectation_threshold(spec: MetricSpec, exp: ast.Expect, res: MetricResult) -> tuple[str | None, float | None]:
    """The comparison an expectation uses: its own, else the metric's default rule."""
    if exp.op is not None:
        return exp.op, exp.threshold
    if exp.prompts and any(p.unchanged for p in exp.prompts):
        return ">=", 1.0  # `"p" unchanged` means locality 1.0 on that prompt
    if spec.relative_tolerance is not None:
        base = res.details.get("baseline")
        if base is None:
            raise RuntimeError(f"metric {spec.name} declares relative_tolerance but reported no details['baseline']")
        return ">=", (1.0 - spec.relative_tolerance) * float(base)
    if spec.default_threshold is not None:
        return ">=", spec.default_threshold
    return None, None


def compare(value: float, op: str, threshold: float | None) -> bool:
    assert threshold is not None
    eps = 1e-9
    if op == ">=":
        return value >= threshold - eps
    if op == ">":
        return value > threshold
    if op == "<=":
        return value <= threshold + eps
    if op == "<":
        return value < threshold
    if op == "==":
        return abs(value - threshold) <= eps
    raise ValueError(f"unknown comparison {op!r}")


def _restore(state: dict[str, Any], snapshot: dict[str, Any]) -> None:
    state.clear()
    state.update(snapshot)


def _group_units(edits: list[PlannedEdit]) -> list[list[PlannedEdit]]:
    units: list[list[PlannedEdit]] = []
    for e in edits:
        if e.batch is not None and units and units[-1][0].batch == e.batch:
            units[-1].append(e)
        else:
            units.append([e])
    return units
