"""Benchmarks: apply a method to the records of a benchmark file and report the KnowEdit
metrics (design/metrics.md) as the paper's table.

Modes:

* ``single``: each edit is applied to the unedited model, measured, then undone
  bit-exactly through its :class:`~kedsl.editing.outcome.EditOutcome` (the paper's setting);
* ``sequential``: the edits accumulate (method state carried across edits, as the
  executor does), one at a time or, for batch methods, in turns of ``batch_size``; every
  case is measured at the end, on the model holding all edits, and with ``checkpoints``
  every that many edits too (the degradation curve; :mod:`.sequential`), where a killed
  run can resume from;
* ``batch``: groups of ``batch_size`` requests in one method call (methods with
  ``supports_batch``); each group is applied to the unedited model, measured, undone.

Baselines (locality's unedited argmax, the pre-edit fluency) and the pre-edit efficacy
are measured on the unedited model before any edit, in one batched call per metric.
After an edit the metrics are measured in one call per metric for all cases edited
together (one case per call in single mode, which that mode makes unavoidable).

A case whose edit the method rejects (a :class:`~kedsl.errors.KedslError`, e.g. a
subject missing from the prompt) is kept in the results with its error and is not
counted in any average; the table says how many failed.

Across ranks (``torchrun``, ``kedsl bench --workers N``; :mod:`kedsl.distributed`), single
and batch mode split the groups of edits: each rank edits, measures and undoes its share
of whole groups, exactly as one process would (the same groups, seeds and unedited model
for each), and rank 0 gathers the records. What is measured on the unedited model is
measured by every rank over all cases, in the same batches as one process, so every
per-case value and the aggregate equal a one-process run's. Sequential mode cannot be
split: each edit builds on all the edits before it.

The library logs and reports progress through a callback; ``kedsl bench`` prints.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..cache import stats_dir
from . import sequential as seq
from ..editing.method import refuse_unsupported_requests
from ..errors import KedslError, UsageError, did_you_mean
from ..records import jsonable
from ..registry import Registry, get_registry
from ..registry.loader import software_versions
from ..registry.params import Param, Range, validate_params
from ..registry.presets import params_for
from ..registry.specs import MethodSpec
from .table import DEFAULT_METRICS, FLUENCY_METRICS, FORMAT_METRICS, PRE_EFFICACY, render_table

if TYPE_CHECKING:
    from ..distributed import Ranks

log = logging.getLogger(__name__)

MODES = ("single", "sequential", "batch")

#: progress(done, total, message)
Progress = Callable[[int, int, str], None]


@dataclass
class BenchSettings:
    """What to run: a method with its given (unresolved) parameters, a mode, metrics."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    mode: str = "single"
    batch_size: int = 1
    metrics: list[str] | None = None  # None: every metric that applies to the data
    seed: int = 0
    checkpoints: int | None = None  # sequential: measure the curve every this many edits
    checkpoint_dir: str | None = None  # sequential: save a resumable state at each checkpoint here


@dataclass
class BenchResult:
    config: dict[str, Any]
    cases: list[dict[str, Any]]
    aggregate: dict[str, Any]
    metrics: list[str]  # the measured metrics, table order
    skipped: list[str]  # default metrics left out by the user's selection

    curve: list[dict[str, Any]] = field(default_factory=list)  # sequential with checkpoints

    def to_json(self) -> dict[str, Any]:
        out = {"aggregate": self.aggregate, "cases": self.cases, "config": self.config}
        if self.curve:
            out["curve"] = self.curve
        return out

    def table(self) -> str:
        return render_table(self)


# -- command-line parameters ---------------------------------------------------------------
def parse_param_value(param: Param, text: str) -> Any:
    """A ``--param k=v`` value as ``param``'s declared type (then validated by the schema)."""
    t = param.type
    s = text.strip()
    try:
        if t == "int|auto":
            return "auto" if s == "auto" else int(s)
        if t == "int":
            return int(s)
        if t == "float":
            return float(s)
        if t == "bool":
            low = s.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError(s)
        if t == "str":
            return text
        if t == "layers" and ".." in s:
            a, _, b = s.partition("..")
            return Range(int(a), int(b))
        if t in ("list[int]", "layers"):
            items = _list_items(s)
            if t == "layers" and len(items) == 1 and not s.startswith("["):
                return int(items[0])
            return [int(x) for x in items]
        if t == "list[str]":
            if s.startswith("["):
                value = json.loads(s)
                if isinstance(value, list):
                    return value
                raise ValueError(s)
            return [x.strip() for x in s.split(",") if x.strip()]
    except (ValueError, json.JSONDecodeError):
        raise UsageError(f"--param {param.name}={text}: not a valid {param.type}", param.describe()) from None
    raise AssertionError(f"unhandled parameter type {t!r}")


def _list_items(s: str) -> list[str]:
    inner = s[1:-1] if s.startswith("[") and s.endswith("]") else s
    return [x.strip() for x in inner.split(",") if x.strip()]


def parse_param_args(spec: MethodSpec, args: Sequence[str]) -> dict[str, Any]:
    """``["layer=8", "v_lr=0.5"]`` -> ``{"layer": 8, "v_lr": 0.5}``, typed by the method's
    schema and validated against it."""
    by_name = {p.name: p for p in spec.params}
    given: dict[str, Any] = {}
    for arg in args:
        name, eq, text = arg.partition("=")
        name = name.strip()
        if not eq or not name:
            raise UsageError(f"--param {arg!r} is not NAME=VALUE", "e.g. --param layer=8")
        p = by_name.get(name)
        if p is None:
            hint = did_you_mean(name, list(by_name)) or (
                f"{spec.name}'s parameters: " + ", ".join(sorted(by_name)) if by_name else f"{spec.name} takes no parameters"
            )
            raise UsageError(f"method `{spec.name}` has no parameter `{name}`", hint)
        given[name] = parse_param_value(p, text)
    problems = validate_params(spec.params, given)
    if problems:
        _, message, hint = problems[0]
        raise UsageError(message, hint)
    return given


# -- checks that need no model -------------------------------------------------------------
def select_metrics(registry: Registry, requested: Sequence[str] | None, data_format: str | None) -> tuple[list[str], list[str]]:
    """The metrics to measure (table order) and the default ones the selection skips."""
    defaults = list(FORMAT_METRICS.get(data_format or "", DEFAULT_METRICS))
    if requested is None:
        chosen = defaults
    else:
        known = [PRE_EFFICACY] + sorted(registry.metrics)
        chosen = []
        for name in requested:
            if name not in known:
                raise UsageError(f"unknown metric `{name}`", did_you_mean(name, known) or "metrics: " + ", ".join(known))
            if name not in chosen:
                chosen.append(name)
    for name in chosen:
        if name == PRE_EFFICACY:
            registry.metric("efficacy")
        else:
            registry.metric(name)  # the plugin that provides it must be loaded
    order = {m: i for i, m in enumerate(defaults)}
    chosen.sort(key=lambda m: order.get(m, len(order)))
    return chosen, [m for m in defaults if m not in chosen]


def check_settings(registry: Registry, settings: BenchSettings) -> MethodSpec:
    """Validate the method, mode and batch size before anything is loaded."""
    spec = registry.method(settings.method)
    if settings.mode not in MODES:
        raise UsageError(f"unknown mode `{settings.mode}`", did_you_mean(settings.mode, MODES) or "modes: " + ", ".join(MODES))
    if settings.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if settings.mode == "batch" and not spec.supports_batch:
        batchers = sorted(n for n, s in registry.methods.items() if s.supports_batch)
        raise UsageError(
            f"method `{spec.name}` does not support batch edits",
            "use --mode single or sequential" + (f", or a batch method ({', '.join(batchers)})" if batchers else ""),
        )
    if settings.mode == "single" and settings.batch_size != 1:
        raise UsageError("--batch-size applies to --mode batch and sequential (turns) only")
    if settings.mode == "sequential" and not spec.supports_sequential:
        raise UsageError(f"method `{spec.name}` does not support sequential edits", "use --mode single")
    if settings.mode == "sequential" and settings.batch_size != 1 and not spec.supports_batch:
        raise UsageError(f"method `{spec.name}` edits one fact per call, so it cannot take turns of {settings.batch_size}", "drop --batch-size")
    if settings.checkpoints is not None:
        if settings.mode != "sequential":
            raise UsageError("--checkpoints applies to --mode sequential only", "the curve follows edits as they accumulate")
        if settings.checkpoints < 1:
            raise UsageError("--checkpoints must be at least 1")
    if settings.checkpoint_dir is not None and settings.checkpoints is None:
        raise UsageError("--checkpoint-dir needs --checkpoints N", "a run saves its state at each checkpoint")
    return spec


def check_splittable(settings: BenchSettings, world: int) -> None:
    """Refuse to split a sequential run over ``world`` > 1 ranks."""
    if world > 1 and settings.mode == "sequential":
        raise UsageError(
            "sequential mode cannot be split across ranks: each edit is applied to the model holding every edit before it",
            "run it as one process, or use --mode single or batch",
        )


def data_sha256(path: str | Path) -> str:
    """SHA-256 of a data file (of a directory: over its files' relative names and bytes)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# -- the run -------------------------------------------------------------------------------
def run_bench(
    model: Any,
    cases: Sequence[Any],
    settings: BenchSettings,
    *,
    registry: Registry | None = None,
    data: dict[str, Any] | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    unedited: dict[str, Any] | None = None,
    ranks: "Ranks | None" = None,
) -> BenchResult:
    """Edit ``model`` with ``settings.method`` for each :class:`~kedsl.evaluation.datasets.BenchCase` and
    measure the metrics. ``data`` (path, sha256, format, limit, offset) goes into the
    config as given. In single and batch mode the model ends as it started.

    ``unedited`` is a dict the caller keeps across runs on the same model and cases (a
    suite's methods on one dataset): what is measured on the unedited model (baselines,
    pre-edit values) is stored in it and taken from it, keyed by the model's fingerprint,
    the metric and the cases, instead of being measured again.

    With ``ranks`` (every rank calls this with the same model, cases and settings), each
    rank edits its share of the groups and every rank returns the whole run's result;
    ``progress`` counts the edits of all ranks."""
    import torch

    from ..editing.outcome import EditContext, EditOutcome
    from ..model.journal import WeightJournal

    registry = registry or get_registry()
    spec = check_settings(registry, settings)
    check_splittable(settings, ranks.world if ranks else 1)
    fmt = cases[0].format if cases else (data or {}).get("format")
    metrics, skipped = select_metrics(registry, settings.metrics, fmt)
    params = params_for(spec, settings.params, model).params
    say = progress or (lambda done, total, msg: None)
    if cache_dir is None:
        cache_dir = stats_dir()

    evals = [c.case for c in cases]
    impls = {m: registry.metric("efficacy" if m == PRE_EFFICACY else m).load() for m in metrics}
    fp_before = model.fingerprint()
    n = len(cases)
    records: list[dict[str, Any]] = [
        {
            "index": c.index,
            "subject": c.request.subject,
            "prompt": c.request.prompt,
            "target": c.request.target,
            "old": c.request.old,
            "status": "pending",
            "error": None,
            "seconds": None,
            "metrics": {},
            "n": {},
            "details": {},
        }
        for c in cases
    ]

    # 1. On the unedited model: baselines and pre-edit measurements, batched across cases.
    baselines: dict[str, list[Any]] = {}
    cases_key = tuple(c.index for c in cases)

    def once(m: str, measure_it: Callable[[], Any]) -> Any:
        if unedited is None:
            return measure_it()
        key = (fp_before, m, cases_key)
        if key not in unedited:
            unedited[key] = measure_it()
        return unedited[key]

    if n:
        for m in metrics:
            mspec = registry.metric("efficacy" if m == PRE_EFFICACY else m)
            if m == PRE_EFFICACY:
                say(0, n, "pre-edit efficacy")
                _store(records, range(n), PRE_EFFICACY, once(m, lambda m=m: impls[m].measure(model, evals, None)), jsonable)
            elif mspec.needs_baseline:
                say(0, n, f"{m} baseline (unedited model)")
                baselines[m] = once(m, lambda m=m: impls[m].baseline(model, evals))
                if m in FLUENCY_METRICS:  # the pre-edit fluency is worth its own column
                    for r, e, b in zip(records, evals, baselines[m]):
                        r["metrics"][f"pre_{m}"] = b
                        r["n"][f"pre_{m}"] = len(impls[m].prompts(e)) if b is not None else 0
    post = [m for m in metrics if m != PRE_EFFICACY]

    def measure_metric(m: str, idx: list[int]) -> list[Any]:
        return impls[m].measure(model, [evals[i] for i in idx], [baselines[m][i] for i in idx] if m in baselines else None)

    def measure(idx: list[int]) -> None:
        idx = [i for i in idx if records[i]["status"] == "edited"]
        if not idx:
            return
        for m in post:
            _store(records, idx, m, measure_metric(m, idx), jsonable)
        for i in idx:
            records[i]["status"] = "measured"

    # 2. The edits (across ranks: this rank's share of the groups).
    method = spec.load()
    method_state: dict[str, Any] = {}
    size = settings.batch_size
    groups = [list(range(s, min(s + size, n))) for s in range(0, n, size)]
    mine = ranks.share(list(enumerate(groups))) if ranks else list(enumerate(groups))
    done_key = ranks.fresh_key("bench/done") if ranks else ""
    method_seconds = 0.0
    edited = 0
    edited_fps: dict[int, str] = {}  # group number -> the model's fingerprint with that group's edit in place
    curve: list[dict[str, Any]] = []
    touched: set[str] = set()
    done_groups = 0
    run_key = seq.run_key({"model_fingerprint": fp_before, "method": spec.name, "params": jsonable(params), "mode": settings.mode,
                           "batch_size": size, "seed": settings.seed, "data_sha256": (data or {}).get("data_sha256"),
                           "cases_digest": cases_key, "checkpoints": settings.checkpoints})  # fmt: skip
    ckpt_dir = Path(settings.checkpoint_dir) if settings.checkpoint_dir else None
    if ckpt_dir is not None:
        model.meta["base_fingerprint"] = fp_before  # statistics stay keyed by the unedited model
        resumed = seq.load_checkpoint(ckpt_dir, run_key, model, spec.name, registry)
        if resumed is not None:
            done_groups, saved, touched, method_state = resumed
            records[:] = saved["records"]
            curve = saved["curve"]
            method_seconds, edited = saved["method_seconds"], saved["edited"]
            say(groups[done_groups - 1][-1] + 1, n, f"resumed from the checkpoint after {done_groups} turn(s)")

    def after_turn(g_no: int, group: list[int]) -> None:
        """Sequential mode: the curve point (and checkpoint) due after this turn, if any."""
        reached = group[-1] + 1
        if not settings.checkpoints or not seq.checkpoint_due(reached - len(group), reached, n, settings.checkpoints):
            return
        say(reached, n, f"checkpoint: measuring the {reached} edits so far")
        if reached == n:  # the last point is the final measurement, taken once (every case, generation metrics too)
            measure(list(range(n)))
            final = aggregate_cases(records, post)
            curve.append(seq.point(n, method_seconds, {m: final[m] for m in post}, {m: final["n"][m] for m in post}))
        else:
            so_far = [i for i in range(reached) if records[i]["status"] == "edited"]
            curve.append(seq.curve_point(reached, so_far, post, measure_metric, method_seconds))
        log.info("bench: curve at %d edits: %s", reached, curve[-1]["metrics"])
        if ckpt_dir is not None:
            progress_doc = {"records": records, "curve": curve, "method_seconds": method_seconds, "edited": edited}
            seq.save_checkpoint(ckpt_dir, run_key, g_no + 1, progress_doc, model, touched, spec.name, method_state)

    def at(group: list[int]) -> int:
        """Where the run stands: this group's first case, or (across ranks) the cases all ranks have done."""
        return ranks.add(done_key, 0) if ranks else group[0]

    for g_no, group in mine:
        if g_no < done_groups:
            continue
        reqs = [cases[i].request for i in group]
        label = reqs[0].subject if len(reqs) == 1 else f"{len(reqs)} edits"
        say(at(group), n, f"editing {label!r} with {spec.name}")
        context = EditContext(
            weights=WeightJournal(model.model),
            cache_dir=cache_dir,
            seed=settings.seed,
            state=method_state if settings.mode == "sequential" else {},
            progress=lambda text, group=group: say(at(group), n, text),
        )
        torch.manual_seed(settings.seed)
        t0 = time.perf_counter()
        try:
            refuse_unsupported_requests(spec, reqs)
            outcome = method.apply(model, reqs, params, context)
        except KedslError as exc:
            context.rollback(model)
            log.warning("%s rejected %s: %s", spec.name, label, exc.message)
            for i in group:
                records[i].update(status="failed", error=exc.message)
            if ranks:
                ranks.add(done_key, len(group))
            if settings.mode == "sequential":
                after_turn(g_no, group)
            continue
        except BaseException:
            context.rollback(model)
            raise
        seconds = time.perf_counter() - t0
        if not isinstance(outcome, EditOutcome):
            raise TypeError(f"method `{spec.name}` returned {type(outcome).__name__}, expected EditOutcome")
        method_seconds += seconds
        edited += len(group)
        for i in group:
            records[i].update(status="edited", seconds=seconds / len(group))
            records[i]["details"]["method"] = jsonable(outcome.info)
        if settings.mode == "sequential":
            touched.update(outcome.changes)
            after_turn(g_no, group)
        else:
            # what this group's edit made, for comparing runs (determinism) without keeping it
            edited_fps[g_no] = model.fingerprint()
            for i in group:
                records[i]["details"]["fingerprint_edited"] = edited_fps[g_no]
            measure(group)
            outcome.undo(model)
            _check_restored(model, outcome)
        if ranks:
            ranks.add(done_key, len(group))
        log.info("bench: group %d/%d (%s) in %.1fs", g_no + 1, len(groups), label, seconds)
    if settings.mode == "sequential" and any(r["status"] == "edited" for r in records):
        say(n, n, "measuring every case on the model holding all edits")
        measure(list(range(n)))
    fp_after = model.fingerprint()
    if settings.mode != "sequential" and fp_after != fp_before:
        raise RuntimeError(f"{settings.mode} mode left the model changed (fingerprint {fp_after[:16]} != {fp_before[:16]})")
    if ranks:
        records, method_seconds, edited, edited_fps = _gather_edits(
            ranks, done_key, n, say, fp_before, [i for _, g in mine for i in g], records, method_seconds, edited, edited_fps
        )
    say(n, n, "done")

    table_metrics = metrics + [f"pre_{m}" for m in metrics if m in FLUENCY_METRICS]
    aggregate = aggregate_cases(records, table_metrics)
    aggregate["seconds_per_edit"] = method_seconds / edited if edited else None
    aggregate["cases"] = n
    aggregate["failed"] = sum(1 for r in records if r["status"] == "failed")
    config = {
        "model": model.ref,
        "model_source": model.source,
        "model_fingerprint": fp_before,
        "fingerprint_after": fp_after,
        # single/batch: one digest of every group's edited weights (equal across runs iff
        # every edit was bit-identical); sequential: fingerprint_after says it
        "edits_digest": hashlib.sha256("".join(edited_fps[g] for g in sorted(edited_fps)).encode()).hexdigest() if edited_fps else None,
        "method": spec.name,
        "params": jsonable(params),
        "given_params": jsonable(settings.params),
        "mode": settings.mode,
        "batch_size": size,
        "seed": settings.seed,
        "metrics": table_metrics,
        "protocols": {m: registry.metric("efficacy" if m == PRE_EFFICACY else m).doc + (" (on the unedited model)" if m == PRE_EFFICACY else "") for m in metrics},
        "skipped_metrics": skipped,
        **(data or {}),
        "versions": software_versions(registry),
    }
    if settings.checkpoints:
        config["checkpoints"] = settings.checkpoints
    return BenchResult(config=config, cases=records, aggregate=aggregate, metrics=table_metrics, skipped=skipped, curve=curve)


def _gather_edits(
    ranks: "Ranks",
    done_key: str,
    n: int,
    say: Progress,
    fingerprint: str,
    mine: list[int],
    records: list[dict[str, Any]],
    method_seconds: float,
    edited: int,
    edited_fps: dict[int, str],
) -> tuple[list[dict[str, Any]], float, int, dict[int, str]]:
    """Every rank's records (of the cases it edited), method time, edit count and edited
    fingerprints, merged on every rank once all ranks are done (rank 0 reports the whole
    run's progress while it waits for the others)."""
    if ranks.is_main:
        ranks.wait_for_count(done_key, n, lambda done: say(done, n, f"waiting for the other ranks ({done}/{n} cases done)"), "the edits")
    part = {"fingerprint": fingerprint, "records": {i: records[i] for i in mine}, "seconds": method_seconds, "edited": edited, "fps": edited_fps}
    parts = ranks.gather_objects(part, "the gathering of the results")
    merged = None
    if parts is not None:
        other = next((r for r, p in enumerate(parts) if p["fingerprint"] != fingerprint), None)
        if other is not None:
            raise UsageError(f"rank {other} benchmarked a different model (fingerprint {parts[other]['fingerprint'][:16]}, rank 0 {fingerprint[:16]})",
                             "every rank must load the same model")  # fmt: skip
        merged = list(records)
        for p in parts:
            for i, rec in p["records"].items():
                merged[i] = rec
        merged = (merged, sum(p["seconds"] for p in parts), sum(p["edited"] for p in parts), {g: fp for p in parts for g, fp in p["fps"].items()})
    return ranks.broadcast_object(merged)


def _store(records: list[dict[str, Any]], idx: Any, name: str, results: list[Any], jsonable: Callable[[Any], Any]) -> None:
    for i, res in zip(idx, results):
        records[i]["metrics"][name] = res.value
        records[i]["n"][name] = res.n
        if res.details:
            records[i]["details"][name] = jsonable(res.details)


def _check_restored(model: Any, outcome: Any) -> None:
    """Undo must restore every touched weight bit-exactly (an invariant, checked cheaply on
    the touched parameters only)."""
    import torch

    for name, ch in outcome.changes.items():
        now = model.read_weight(name).to("cpu")
        if not torch.equal(now, ch.before):
            raise RuntimeError(f"undo did not restore {name} bit-exactly")


def aggregate_cases(records: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """Per metric, the mean over the cases whose value is not None (failed cases have
    none), with ``n``: how many cases each mean averages; for a metric whose cases report
    values per key (portability's Reasoning, Subject_Aliasing, ...; locality's), also
    ``per_key``: each key's mean over the cases that have it."""
    out: dict[str, Any] = {}
    counts: dict[str, int] = {}
    per_key: dict[str, dict[str, float]] = {}
    for m in metrics:
        vals = [r["metrics"][m] for r in records if r["metrics"].get(m) is not None]
        out[m] = sum(vals) / len(vals) if vals else None
        counts[m] = len(vals)
        keyed: dict[str, list[float]] = {}
        for r in records:
            for k, v in (((r.get("details") or {}).get(m) or {}).get("per_key") or {}).items():
                if r["metrics"].get(m) is not None:
                    keyed.setdefault(k, []).append(v)
        if keyed:
            per_key[m] = {k: sum(v) / len(v) for k, v in sorted(keyed.items())}
    out["n"] = counts
    if per_key:
        out["per_key"] = per_key
    return out
