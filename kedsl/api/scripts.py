"""Scripts: check, plan and apply a ``.ke`` script end to end (``kedsl apply``, ``kedsl
plan``). Importing this module imports no torch; running a script does."""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..editing.request import DEFAULT_REFUSAL, EditRequest
from ..errors import UsageError
from ..lang import DataFiles, DataTable, ScriptError, ast, check_source, read_script, resolve_edits
from ..registry import Registry, get_registry
from ..registry.loader import software_versions
from ..registry.presets import params_for

log = logging.getLogger(__name__)

DEFAULT_DB = "kedsl.db"
#: How many rows of each data file `kedsl plan` shows (it counts them all).
PLAN_ROWS_SHOWN = 5


def default_db_path() -> Path:
    """``$KEDSL_DB`` if set, else ``kedsl.db`` in the current directory."""
    return Path(os.environ.get("KEDSL_DB", DEFAULT_DB))


def load_checked(path: str | Path, registry: Registry | None = None, data_files: DataFiles = None) -> ast.Script:
    """Parse and check a script, every row of its data files included; raise
    :class:`kedsl.lang.ScriptError` if it is invalid. ``data_files`` maps a data path as
    the script writes it to the file to read instead (see :func:`kedsl.lang.check`)."""
    registry = registry or get_registry()
    source = read_script(path)
    script, diagnostics = check_source(source, str(path), registry, data_files=data_files)
    if script is None or any(d.is_error for d in diagnostics):
        raise ScriptError(diagnostics, source=source)
    return script


def data_tables(script: ast.Script) -> list[DataTable]:
    """The data files a checked script's ``edits from`` statements read, as read."""
    return [t for t in script.data.values() if isinstance(t, DataTable)]


def plan(script: ast.Script, registry: Registry | None = None) -> list[Any]:
    """The executor's view of a checked script: one PlannedEdit per edit (each row of a
    data file one), in order."""
    from ..executor import PlannedEdit

    registry = registry or get_registry()
    planned = []
    for r in resolve_edits(script, registry):
        e = r.edit
        planned.append(
            PlannedEdit(
                request=EditRequest(
                    subject=e.subject,
                    prompt=r.prompt,
                    target=(e.target or DEFAULT_REFUSAL) if e.kind == "erase" else (e.target or ""),
                    old=e.old,
                    kind=e.kind,
                    relation=r.relation_id,
                    paraphrases=list(r.paraphrases),
                ),
                method=r.method,
                given_params=dict(r.params),
                expects=list(e.expects),
                batch=r.batch,
                source_line=e.pos.line,
                row=r.row,
                source=r.source,
                locality=list(r.locality),
            )
        )
    return planned


def script_on_fail(script: ast.Script) -> str | None:
    """The script's own `on_fail` policy, or None when it states none."""
    return next((s.policy for s in script.statements if isinstance(s, ast.OnFailStmt)), None)


def model_settings(stmt: ast.ModelStmt | None) -> dict[str, Any]:
    if stmt is None:
        return {}
    return {a.name: (a.value.name if isinstance(a.value, ast.Ident) else a.value) for a in stmt.settings}


def apply(
    script_path: str | Path,
    *,
    db: str | Path | None = None,
    out: str | Path | None = None,
    on_fail: str | None = None,
    seed: int = 0,
    model: Any = None,
    registry: Registry | None = None,
    reporter: Any = None,
    argv: list[str] | None = None,
    record: dict[str, Any] | None = None,
    data_files: DataFiles = None,
    sign: str | Path | None = None,
    skip: frozenset[int] = frozenset(),
) -> Any:
    """Run a script end to end (check, load, edit, expect, save, record); return a RunReport.

    ``model`` may be an already loaded :class:`kedsl.model.LoadedModel` (skips loading).
    Relative ``save to`` paths are resolved against the current directory. ``record``
    adds fields to the run's record (``kind``, ``replay_of``: see :mod:`kedsl.api.history`).
    ``data_files`` replaces data files the script names (see :func:`load_checked`); the
    content of every data file read is recorded with the run. ``sign``: a private key
    (PEM) that signs the saved directory and its provenance attestation. ``skip``: the
    indices of planned edits to leave out (a batch member's revert recomputes the run
    without it).
    """
    from ..executor import Executor, RunReport
    from ..model.loading import load_model
    from ..model.saving import saved_fingerprint
    from ..provenance.attestation import save_attested
    from ..provenance.signing import Signer
    from ..provenance.store import Store

    registry = registry or get_registry()
    script = load_checked(script_path, registry, data_files)
    planned = [e for i, e in enumerate(plan(script, registry)) if i not in skip]
    signer = Signer.from_file(sign) if sign is not None else None  # a key error before any work
    if signer is not None and out is None and script.save is None:
        raise UsageError("--sign signs the saved model, but this run saves none", 'add `save to "DIR";` or pass --out DIR')
    policy = on_fail or script_on_fail(script) or "rollback"
    # The database first: a locked, corrupt or foreign one fails before the model loads.
    store = Store.open(db if db is not None else default_db_path())
    try:
        if model is None:
            stmt = script.model
            assert stmt is not None, "the checker guarantees a model statement"
            model = load_model(stmt.ref, model_settings(stmt), registry)
    except BaseException:
        store.close()
        raise
    save_to = Path(out) if out is not None else (Path(script.save.path) if script.save else None)
    if save_to is not None:
        save_to = save_to.expanduser().absolute()

    source = script.source  # the text the checker read: one read, one hash
    script_sha256 = hashlib.sha256(source.encode()).hexdigest()
    fp_before = model.fingerprint()
    fp_after: str | None = None
    run_id = store.begin_run(
        script_path=str(Path(script_path).absolute()),
        script_text=source,
        script_sha256=script_sha256,
        argv=argv if argv is not None else sys.argv,
        cwd=os.getcwd(),
        versions=software_versions(registry),
        seed=seed,
        on_fail=policy,
        model_ref=model.ref,
        model_source=model.source,
        model_path=model.meta.get("path"),
        fingerprint_before=fp_before,
        **(record or {}),
    )
    status = "failed"
    error: str | None = None
    try:
        for t in data_tables(script):  # what the checker read, kept before any edit
            src = t.source
            store.record_data_file(run_id, t.content, path=src.path, file=src.file, display=src.display, format=src.format,
                                   layout=src.layout, rows=src.rows)  # fmt: skip
        executor = Executor(model, registry, on_fail=policy, seed=seed, store=store, run_id=run_id, reporter=reporter)
        reports = executor.run(planned)
        report = RunReport(run_id=run_id, edits=reports, fingerprint_before=fp_before)
        if any(r.status == "skipped" for r in reports):
            report.status = "aborted"
        elif report.failed_expectations:
            report.status = "expectations_failed"
        report.fingerprint_after = fp_after = model.fingerprint()
        if save_to is not None:
            # Log the save before it happens: a crash mid-save leaves a log that says what
            # the directory should hold, and the saved files name the log entry (anchor).
            save_mode = script.save.mode if script.save else None
            if save_mode == "merged":  # adapters folded in: the saved weights differ
                fp_after = report.fingerprint_after = saved_fingerprint(model, save_mode)
            head = store.record_saving(run_id, save_to, report.fingerprint_after)
            provenance = {
                "run_id": run_id,
                "kind": (record or {}).get("kind", "apply"),
                "script": str(script_path),
                "script_sha256": script_sha256,
                "base_model": model.ref,
                "fingerprint_before": fp_before,
                "parent_run": (store.run(run_id) or {}).get("parent_run"),
                "database": str(store.path.absolute()),
                "log_head": {"event": head["count"], "hash": head["hash"]},
                "edits": [
                    {
                        "id": r.edit_id,
                        "subject": r.request.subject,
                        "prompt": r.request.prompt,
                        "target": r.request.target,
                        "method": r.method,
                        "status": r.status,
                        "params": r.params,
                        "expectations": [x.as_record() for x in r.expectations],
                        **({"data_sha256": r.source.sha256, "data_row": r.row} if r.source is not None else {}),
                    }
                    for r in reports
                ],
            }
            tables = data_tables(script)
            if tables:
                provenance["data_files"] = [
                    {"path": t.source.path, "sha256": t.source.sha256, "size": t.source.size, "rows": t.source.rows,
                     "format": t.source.format}
                    for t in tables
                ]  # fmt: skip
            report.saved_to = save_attested(store, run_id, model, save_to, provenance, fingerprint=fp_after, mode=save_mode,
                                            signer=signer)  # fmt: skip
        status = report.status
        return report
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user"
        raise
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        try:
            store.end_run(
                run_id,
                status,
                fingerprint_after=fp_after if status not in ("failed", "interrupted") else None,
                saved_to=str(save_to) if save_to is not None and status not in ("failed", "interrupted") else None,
                error=error,
            )
        finally:
            store.close()


def plan_report(
    script_path: str | Path,
    *,
    model: Any = None,
    registry: Registry | None = None,
    says_tokens: int = 12,
) -> dict[str, Any]:
    """What ``kedsl apply`` would do, without changing anything: per edit the method, its
    parameters after presets, the parameters it will touch (when the method class defines
    ``touches(model, params) -> list[str]``), what the model says now (greedy) on the
    edit prompt and on each expectation prompt, and ``already``: the model already gives
    the target (teacher-forced efficacy 1.0 on the edit prompt, or its greedy text starts
    with the target). Of the rows of a data file only the first :data:`PLAN_ROWS_SHOWN`
    are among ``edits``; ``data`` gives, per ``edits from`` statement, the file, its
    SHA-256, its row count and the resolved parameters. ``model`` may be an already loaded
    model (else the script's is loaded). The model's fingerprint is checked to be
    unchanged at the end."""
    from ..model.loading import load_model
    from ..toolkit.generation import generate
    from ..toolkit.scoring import teacher_forced

    registry = registry or get_registry()
    script = load_checked(script_path, registry)
    planned = plan(script, registry)
    if model is None:
        stmt = script.model
        assert stmt is not None, "the checker guarantees a model statement"
        model = load_model(stmt.ref, model_settings(stmt), registry)
    fp = model.fingerprint()

    impls: dict[str, Any] = {}
    edits: list[dict[str, Any]] = []
    data: dict[tuple[int, str], dict[str, Any]] = {}  # per `edits from` statement: (line, path)
    prompts: list[str] = []
    for e in planned:
        statement = data.get((e.source_line, e.source.path)) if e.source is not None else None
        if statement is not None and statement["shown"] >= PLAN_ROWS_SHOWN:
            continue  # the rest of the file: counted (its row count), not shown
        spec = registry.method(e.method)
        resolved = params_for(spec, e.given_params, model)
        params = resolved.params
        if spec.name not in impls:
            impls[spec.name] = spec.load()
        touches_fn = getattr(impls[spec.name], "touches", None)
        touched = touches_fn(model, params) if touches_fn is not None else None
        touches = list(touched) if touched is not None else None
        prompts.append(e.request.prompt)
        expectations = []
        for x in e.expects:
            expectations.append(
                {
                    "metric": x.metric,
                    "prompts": [{"prompt": p.prompt, "answer": p.answer, "unchanged": p.unchanged} for p in x.prompts],
                }
            )
            prompts.extend(p.prompt for p in x.prompts)
        if e.source is not None:
            if statement is None:
                src = e.source
                statement = data[(e.source_line, src.path)] = {
                    "line": e.source_line, "path": src.path, "file": src.file, "display": src.display, "format": src.format,
                    "layout": src.layout, "sha256": src.sha256, "size": src.size, "rows": src.rows, "method": spec.name,
                    "params": params, "preset_reason": resolved.reason, "batch": e.batch, "shown": 0,
                }  # fmt: skip
            statement["shown"] += 1
        edits.append(
            {
                "line": e.source_line,
                "row": e.row,
                "data": e.source.display if e.source is not None else None,
                "subject": e.request.subject,
                "prompt": e.request.prompt,
                "target": e.request.target,
                "kind": e.request.kind,
                "method": spec.name,
                "params": params,
                "preset": resolved.preset.model if resolved.preset else None,
                "preset_reason": resolved.reason,
                "batch": e.batch,
                "touches": touches,
                "expectations": expectations,
            }
        )
    # One batched generation for every prompt, one batched teacher-forced pass.
    unique = list(dict.fromkeys(prompts))
    says = dict(zip(unique, generate(model, unique, max_new_tokens=says_tokens)))
    scored = [i for i, d in enumerate(edits) if d["target"]]
    scores = teacher_forced(model, [(edits[i]["prompt"], edits[i]["target"]) for i in scored])
    accuracy = {i: s.accuracy for i, s in zip(scored, scores)}
    for i, d in enumerate(edits):
        d["says"] = says[d["prompt"]]
        d["efficacy_now"] = accuracy.get(i)
        d["already"] = bool(d["target"]) and (
            accuracy.get(i) == 1.0 or d["says"].strip().startswith(d["target"].strip())
        )
        for x in d["expectations"]:
            for p in x["prompts"]:
                p["says"] = says[p["prompt"]]
    if model.fingerprint() != fp:
        raise RuntimeError("plan changed the model's weights")  # an invariant: plan only reads
    return {"script": str(script_path), "model": model.ref, "fingerprint": fp, "edits": edits, "data": list(data.values()),
            "total_edits": len(planned)}  # fmt: skip
