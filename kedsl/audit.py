"""Auditing the provenance store: verify, lineage, show, revert, replay, export.

- :func:`verify_log` checks the event log's hash chain row by row, its anchor (so
  deleting the newest rows is caught too), that the ``runs``/``edits``/``metric_results``
  tables say exactly what the log says, and that every outcome blob still has its hash.
  :func:`verify_model` recomputes a model directory's fingerprint and compares it with the
  fingerprint the log says that directory should have.
- :func:`lineage` follows fingerprints from a model back through the runs that made it.
- :func:`revert` removes one edit's outcome from a saved model; :func:`replay` reruns a
  recorded script on its recorded base model.
- :func:`export` writes an audit report (JSON lines, CSV or one self-contained HTML page).

Everything except :func:`verify_model`, :func:`revert` and :func:`replay` is torch-free.

Limits, stated plainly: the chain proves the log was not edited *unless* the editor
rewrote every hash after the change and the anchor as well (anyone with write access to
the database can rebuild a consistent chain). What catches that is an anchor kept
elsewhere: every saved model directory carries the head hash at save time
(``kedsl.json`` ``provenance.log_head``, also in the model card), and ``kedsl verify``
prints the current head so it can be written down or published.
"""
from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError, StoreError, UsageError
from .store import GENESIS, Store, canonical_json, event_hash

log = logging.getLogger(__name__)

_JSON_COLUMNS = {"argv", "versions", "request", "params", "info", "details", "attachments"}
_RUN_COMPARED = (
    "kind", "status", "started", "ended", "script_path", "script_text", "script_sha256", "argv", "cwd", "user", "host",
    "pid", "versions", "seed", "on_fail", "model_ref", "model_source", "model_path", "fingerprint_before",
    "fingerprint_after", "saved_to", "parent_run", "reverts_edit", "replay_of", "error",
)  # fmt: skip
_METRIC_COMPARED = ("metric", "value", "op", "threshold", "passed", "n", "details")


# -- verification --------------------------------------------------------------------------
@dataclass
class Finding:
    """One thing verification found: ``error`` fails it, ``note`` does not."""

    level: str  # error | note
    message: str
    event: int | None = None  # the first broken event row, when the finding is about one


@dataclass
class Verification:
    events: int = 0
    head: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    model: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    @property
    def first_broken_event(self) -> int | None:
        return next((f.event for f in self.findings if f.level == "error" and f.event is not None), None)

    def error(self, message: str, event: int | None = None) -> None:
        self.findings.append(Finding("error", message, event))

    def note(self, message: str) -> None:
        self.findings.append(Finding("note", message))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head": self.head,
            "first_broken_event": self.first_broken_event,
            "findings": [asdict(f) for f in self.findings],
            "model": self.model,
        }


def verify_log(store: Store) -> Verification:
    """Check the hash chain, the anchor, the tables against the log and the outcome blobs."""
    result = Verification()
    events = store.events()
    result.events = len(events)
    result.head = store.head() if getattr(store, "schema_version", 2) >= 2 else {}
    if not _verify_chain(events, result):
        return result  # the log itself is not trustworthy: nothing to compare against
    _verify_anchor(events, result)
    _verify_tables(store, events, result)
    _verify_blobs(store, result)
    _verify_attachment_blobs(store, result)
    interrupted = [r["id"] for r in store.db.query("SELECT id FROM runs WHERE status IN ('running', 'interrupted')")]
    if interrupted:
        result.note(
            f"{len(interrupted)} run(s) did not finish (killed or still running): {', '.join(interrupted[:5])}"
            + (" ..." if len(interrupted) > 5 else "")
        )
    return result


def _verify_chain(events: list[dict[str, Any]], result: Verification) -> bool:
    prev_hash = GENESIS
    for i, e in enumerate(events, 1):
        if e["id"] != i:
            if e["id"] > i:
                result.error(f"event {i} is missing: the log jumps from event {i - 1} to event {e['id']}", i)
            else:
                result.error(f"event {e['id']} appears out of order at position {i}", e["id"])
            return False
        if e["hash"] != event_hash(e):
            result.error(f"event {i} ({e['kind']}) was changed: its content does not match its hash", i)
            return False
        if e["prev_hash"] != prev_hash:
            result.error(
                f"event {i} ({e['kind']}) does not follow event {i - 1}: the previous hash it records differs "
                f"(an event was removed, inserted or reordered here)",
                i,
            )
            return False
        prev_hash = e["hash"]
    return True


def _verify_anchor(events: list[dict[str, Any]], result: Verification) -> None:
    if not result.head:
        result.note("this database has no log anchor (schema version 1): deleting the newest events is not detectable")
        return
    count, head_hash = result.head["count"], result.head["hash"]
    last = events[-1] if events else {"id": 0, "hash": GENESIS}
    if count > last["id"]:
        result.error(
            f"event {last['id'] + 1} is missing: the log ends at event {last['id']} but its anchor records {count} "
            "events (the newest events were deleted)",
            last["id"] + 1,
        )
    elif count < last["id"] or head_hash != last["hash"]:
        result.error(
            f"the log anchor (event {count}, {head_hash[:12]}) does not match the newest event "
            f"({last['id']}, {last['hash'][:12]}): events were added or changed outside kedsl",
            min(count + 1, last["id"]) or None,
        )


def _state_from_events(events: list[dict[str, Any]]) -> tuple[dict, dict, dict]:
    """Rebuild what the tables should hold from the log alone."""
    runs: dict[str, dict[str, Any]] = {}
    edits: dict[str, dict[str, Any]] = {}
    metrics: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        payload = json.loads(e["payload"])
        if e["kind"] == "run_started":
            runs[payload["id"]] = dict(payload, _event=e["id"])
        elif e["kind"] == "run_ended" and e["run_id"] in runs:
            runs[e["run_id"]].update(payload)
            runs[e["run_id"]]["_ended_event"] = e["id"]
        elif e["kind"] == "edit":
            rows = payload.pop("metrics", [])
            edits[payload["id"]] = dict(payload, _event=e["id"])
            metrics[payload["id"]] = rows
    return runs, edits, metrics


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _verify_tables(store: Store, events: list[dict[str, Any]], result: Verification) -> None:
    runs, edits, metrics = _state_from_events(events)
    table_runs = {r["id"]: r for r in store.db.query("SELECT * FROM runs")}
    for run_id, logged in runs.items():
        row = table_runs.pop(run_id, None)
        if row is None:
            result.error(f"run {run_id} is in the log (event {logged['_event']}) but was deleted from the runs table")
            continue
        for col in _RUN_COMPARED:
            # Runs logged before schema 2 got `kind` from the migration, not from an event.
            expected = logged.get(col, "apply" if col == "kind" else None)
            if col in row and not _same(row[col], expected):
                result.error(f"run {run_id}: `{col}` in the runs table differs from the log (event {logged['_event']})")
    for run_id in table_runs:
        result.error(f"run {run_id} is in the runs table but not in the log (added outside kedsl)")
    table_edits = {r["id"]: r for r in store.db.query("SELECT * FROM edits")}
    for edit_id, logged in edits.items():
        row = table_edits.pop(edit_id, None)
        if row is None:
            result.error(f"edit {edit_id} is in the log (event {logged['_event']}) but was deleted from the edits table")
            continue
        for col, value in row.items():
            if col in logged and not _same(value, logged[col]):
                result.error(f"edit {edit_id}: `{col}` in the edits table differs from the log (event {logged['_event']})")
        in_table = [
            tuple(m.get(c) for c in _METRIC_COMPARED)
            for m in store.db.query("SELECT * FROM metric_results WHERE edit_id = ? ORDER BY id", [edit_id])
        ]
        in_log = [tuple(m.get(c) for c in _METRIC_COMPARED) for m in metrics.get(edit_id, [])]
        if len(in_table) != len(in_log) or not all(
            all(_same(x, y) for x, y in zip(a, b)) for a, b in zip(in_table, in_log)
        ):
            result.error(f"edit {edit_id}: its metric results differ from the log (event {logged['_event']})")
    for edit_id in table_edits:
        result.error(f"edit {edit_id} is in the edits table but not in the log (added outside kedsl)")
    orphans = store.db.execute(
        "SELECT COUNT(*) FROM metric_results WHERE edit_id NOT IN (SELECT id FROM edits)"
    ).fetchone()[0]
    if orphans:
        result.error(f"{orphans} metric result(s) belong to no edit in the log (added outside kedsl)")


def _verify_blobs(store: Store, result: Verification) -> None:
    seen: set[str] = set()
    for row in store.db.query("SELECT id, outcome_sha256 FROM edits WHERE outcome_sha256 IS NOT NULL ORDER BY id"):
        sha = row["outcome_sha256"]
        if sha in seen:
            continue
        seen.add(sha)
        path = store.blob_path(sha)
        if not path.is_file():
            result.error(f"edit {row['id']}: its outcome blob {path.name} is missing from {store.blob_dir}")
        elif _file_sha256(path) != sha:
            result.error(f"edit {row['id']}: its outcome blob {path.name} was changed (SHA-256 mismatch)")


def _verify_attachment_blobs(store: Store, result: Verification) -> None:
    for row in store.db.query("SELECT id, attachments FROM edits WHERE attachments IS NOT NULL AND attachments != '[]'"):
        for rec in json.loads(row["attachments"]):
            sha = rec.get("blob") if isinstance(rec, dict) else None
            if not sha:
                continue
            path = store.blob_path(sha)
            if not path.is_file():
                result.error(f"edit {row['id']}: its {rec.get('kind')} attachment blob {path.name} is missing from {store.blob_dir}")
            elif _file_sha256(path) != sha:
                result.error(f"edit {row['id']}: its {rec.get('kind')} attachment blob {path.name} was changed (SHA-256 mismatch)")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# -- model directories ------------------------------------------------------------------------
def read_model_record(model_dir: str | Path) -> dict[str, Any] | None:
    """A saved directory's ``kedsl.json`` (None when it has none); torch-free."""
    d = Path(model_dir)
    if not d.is_dir():
        raise UsageError(f"no model directory at {d}", "pass the directory `save to` or --out wrote")
    f = d / "kedsl.json"  # kedsl.model.saving.MARKER (that module imports torch)
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{f} is not readable JSON ({exc})") from None


def expected_fingerprint(store: Store, model_dir: str | Path) -> dict[str, Any]:
    """What the log says ``model_dir`` should hold: the ``saving`` event of the run named
    in its ``kedsl.json`` (or, without one, the newest save logged to that path)."""
    d = Path(model_dir).absolute()
    record = read_model_record(d)
    run_id = ((record or {}).get("provenance") or {}).get("run_id")
    saves = [(e, json.loads(e["payload"])) for e in store.events() if e["kind"] == "saving"]
    candidates = [(e, p) for e, p in saves if run_id and e["run_id"] == run_id]
    if candidates:
        same_path = [(e, p) for e, p in candidates if Path(p["path"]) == d]
        e, p = (same_path or candidates)[-1]
    else:
        same_path = [(e, p) for e, p in saves if Path(p["path"]) == d]
        if not same_path:
            raise UsageError(
                f"the log at {store.path} records no model saved to {d}"
                + (f" (its kedsl.json names run {run_id})" if run_id else " and it has no kedsl.json"),
                "pass the database that recorded it with --db",
            )
        e, p = same_path[-1]
    return {"run_id": e["run_id"], "event": e["id"], "fingerprint": p["fingerprint"], "record": record}


def model_fingerprint(model_dir: str | Path) -> str:
    """Load ``model_dir`` in the dtype it was saved in and fingerprint it (imports torch)."""
    from .model.loading import load_model

    return load_model(str(Path(model_dir).absolute()), {"dtype": _saved_dtype(model_dir)}).fingerprint()


def _saved_dtype(model_dir: str | Path) -> str:
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        raise ModelError(f"{model_dir} has no readable config.json", "is it a saved model directory?") from None
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


def verify_model(store: Store, model_dir: str | Path, result: Verification | None = None) -> Verification:
    """Recompute ``model_dir``'s fingerprint and compare it with the log's (imports torch)."""
    result = result or Verification()
    expected = expected_fingerprint(store, model_dir)
    record = expected.pop("record")
    prov = (record or {}).get("provenance") or {}
    try:  # loading installs the attachments and checks each one's recorded digest
        actual = model_fingerprint(model_dir)
    except ModelError as exc:
        if "attachment" not in str(exc):
            raise
        result.error(str(exc))
        result.model = {**expected, "path": str(Path(model_dir).absolute()), "actual": None, "matches": False}
        return result
    expected.update(path=str(Path(model_dir).absolute()), actual=actual, matches=actual == expected["fingerprint"])
    result.model = expected
    if record is None:
        result.note(f"{model_dir} has no kedsl.json; compared with the newest save the log records to that path")
    elif record.get("fingerprint") != expected["fingerprint"]:
        result.error(f"{model_dir}/kedsl.json claims fingerprint {str(record.get('fingerprint'))[:16]}, "
                     f"but the log records {expected['fingerprint'][:16]} for run {expected['run_id']}")
    head = prov.get("log_head")
    if head:
        row = store.db.execute("SELECT hash FROM events WHERE id = ?", [head["event"]]).fetchone()
        if row is None or row[0] != head["hash"]:
            result.error(
                f"the log no longer holds event {head['event']} with the hash {model_dir} was saved with: "
                "the log was rewritten or truncated after this model was saved",
                head["event"],
            )
    if not expected["matches"]:
        result.error(
            f"the weights in {model_dir} have fingerprint {actual[:16]}, but the log says run {expected['run_id']} "
            f"saved {expected['fingerprint'][:16]} there: the weights were changed outside kedsl"
        )
    return result


# -- reading: runs, edits, lineage ---------------------------------------------------------------
def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for k in _JSON_COLUMNS & set(out):
        if isinstance(out[k], str):
            try:
                out[k] = json.loads(out[k])
            except ValueError:
                pass
    return out


def edit_record(store: Store, edit_id: str) -> dict[str, Any]:
    row = store.edit(edit_id)
    if row is None:
        raise UsageError(f"no edit {edit_id} in {store.path}", "list edits with `kedsl log`")
    rec = _decoded(row)
    rec["metrics"] = [_decoded(m) for m in store.metric_results(edit_id)]
    if row.get("outcome_sha256"):
        rec["outcome"] = blob_summary(store, row["outcome_sha256"])
    return rec


def run_record(store: Store, run_id: str, with_events: bool = False) -> dict[str, Any]:
    row = store.run(run_id)
    if row is None:
        raise UsageError(f"no run {run_id} in {store.path}", "list runs with `kedsl log`")
    rec = _decoded(row)
    rec["edits"] = [edit_record(store, e["id"]) for e in store.edits(run_id)]
    if with_events:
        rec["events"] = [
            {k: e[k] for k in ("id", "kind", "at", "hash")} for e in store.events(run_id)
        ]
    return rec


def show(store: Store, ident: str) -> dict[str, Any]:
    """One run or edit in full; ``ident`` may be a unique prefix of its id."""
    if store.run(ident):
        return {"type": "run", **run_record(store, ident, with_events=True)}
    if store.edit(ident):
        return {"type": "edit", **edit_record(store, ident)}
    like = ident.replace("%", "").replace("_", "\\_") + "%"
    runs = [r[0] for r in store.db.execute("SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\'", [like])]
    edits = [r[0] for r in store.db.execute("SELECT id FROM edits WHERE id LIKE ? ESCAPE '\\'", [like])]
    matches = runs if len(runs) == 1 else runs + edits  # a run's prefix also prefixes its edits' ids
    if len(matches) == 1:
        return show(store, matches[0])
    if matches:
        raise UsageError(f"`{ident}` names {len(matches)} runs/edits", "give more of the id: " + ", ".join(matches[:5]))
    raise UsageError(f"no run or edit `{ident}` in {store.path}", "list them with `kedsl log`")


def blob_summary(store: Store, sha: str) -> dict[str, Any]:
    """The parameters an outcome blob holds (read from the safetensors header, no torch)."""
    path = store.blob_path(sha)
    summary: dict[str, Any] = {"sha256": sha, "path": str(path), "present": path.is_file(), "parameters": {}}
    if not path.is_file():
        return summary
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    for key, meta in header.items():
        side, _, name = key.partition("::")
        if side == "after":
            summary["parameters"][name] = {"dtype": meta["dtype"], "shape": meta["shape"]}
    return summary


def lineage(store: Store, model_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Runs newest first: all of them, or those that made ``model_dir`` (following each
    run's input fingerprint to the run that produced it)."""
    if model_dir is None:
        return [run_record(store, r["id"]) for r in store.runs()]
    record = read_model_record(model_dir)
    prov = (record or {}).get("provenance") or {}
    run_id = prov.get("run_id")
    if not run_id and record and record.get("fingerprint"):
        run_id = store.run_producing(record["fingerprint"])
    if not run_id or store.run(run_id) is None:
        raise UsageError(
            f"the log at {store.path} does not know the model in {model_dir}",
            "pass the database that recorded it with --db" if record else f"{model_dir} has no kedsl.json",
        )
    chain, seen = [], set()
    while run_id and run_id not in seen:
        seen.add(run_id)
        rec = run_record(store, run_id)
        chain.append(rec)
        run_id = rec.get("parent_run")
    return chain


# -- revert ----------------------------------------------------------------------------------------
def revert(
    store: Store,
    edit_id: str,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    force: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Remove exactly ``edit_id``'s outcome from the model in ``model_dir``; save the result
    to ``out_dir`` and record it as a run of kind ``revert``.

    A parameter that still holds the edit's ``after`` value bit-exactly gets its
    ``before`` value back bit-exactly; one that later edits changed too gets the edit's
    delta subtracted (``mode: subtracted`` in the record, and a log warning).
    """
    import torch

    from .editing import WeightChange
    from .executor import versions
    from .model.loading import load_model
    from .model.saving import save_model
    from .registry import get_registry

    edit = store.edit(edit_id)
    if edit is None:
        raise UsageError(f"no edit {edit_id} in {store.path}", "list edits with `kedsl log --model DIR`")
    if edit["status"] != "applied":
        raise UsageError(f"edit {edit_id} was {edit['status']}: it is in no saved model, there is nothing to revert")
    attached = json.loads(edit.get("attachments") or "[]")
    if not edit["outcome_sha256"] and not attached:
        raise UsageError(f"edit {edit_id} changed no weights and added no attachment: there is nothing to revert")
    # Edits of one batch share one outcome: reverting one reverts them all.
    sharing = [r[0] for r in store.db.execute(
        "SELECT id FROM edits WHERE run_id = ? AND id != ? AND status = 'applied' AND "
        "((outcome_sha256 IS NOT NULL AND outcome_sha256 = ?) OR (attachments != '[]' AND attachments = ?))",
        [edit["run_id"], edit_id, edit["outcome_sha256"], edit["attachments"]],
    )]  # fmt: skip
    if not force:
        try:
            in_history = {r["id"] for r in lineage(store, model_dir)}
        except UsageError:
            in_history = set()
    if not force and edit["run_id"] not in in_history:
        raise UsageError(
            f"edit {edit_id} (run {edit['run_id']}) is not in the recorded history of {model_dir}",
            "check with `kedsl log --model DIR`; pass --force to subtract it anyway",
        )
    out = Path(out_dir).expanduser().absolute()
    if out == Path(model_dir).expanduser().absolute():
        raise UsageError("--out must differ from --model", "revert writes a new directory and keeps the original")
    outcome = store.load_outcome(edit["outcome_sha256"]) if edit["outcome_sha256"] else {}
    registry = get_registry()
    model = load_model(str(Path(model_dir).absolute()), {"dtype": _saved_dtype(model_dir)}, registry)
    fp_before = model.fingerprint()
    run_id = store.begin_run(
        kind="revert",
        reverts_edit=edit_id,
        argv=argv if argv is not None else sys.argv,
        cwd=os.getcwd(),
        versions=versions(registry),
        model_ref=str(Path(model_dir).absolute()),
        model_source=model.source,
        model_path=model.meta.get("path"),
        fingerprint_before=fp_before,
    )
    status, error = "failed", None
    try:
        changes: dict[str, WeightChange] = {}
        modes: dict[str, str] = {}
        with torch.no_grad():
            for name, (before, after) in outcome.items():
                try:
                    p = model.parameter(name)
                except AttributeError:
                    raise UsageError(f"the model in {model_dir} has no parameter {name} (edit {edit_id} changed it)") from None
                if tuple(p.shape) != tuple(after.shape):
                    raise UsageError(f"{name} has shape {tuple(p.shape)} in {model_dir}, but edit {edit_id} changed a {tuple(after.shape)} one")
                current = p.detach().to("cpu", copy=True)
                if current.dtype == after.dtype and torch.equal(current, after):
                    p.copy_(before.to(p.dtype))
                    modes[name] = "restored"
                else:
                    p.sub_((after.float() - before.float()).to(device=p.device, dtype=p.dtype))
                    modes[name] = "subtracted"
                    log.warning("%s was changed again after edit %s: subtracted its delta (not bit-exact)", name, edit_id)
                changes[name] = WeightChange(name, current, p.detach().to("cpu", copy=True))
            _remove_attachments(store, registry, model, model_dir, edit_id, attached, changes, modes)
        sha = store.save_outcome(changes)
        rev_id = store.record_edit(
            run_id=run_id, seq=0, subject=edit["subject"], request={"reverts": edit_id, "also_reverted": sharing},
            method="revert", params={"modes": modes}, status="applied", seconds=0.0,
            info={"reverted_outcome": edit["outcome_sha256"]}, outcome_sha256=sha, metrics=[],
        )  # fmt: skip
        fp_after = model.fingerprint()
        head = store.record_saving(run_id, out, fp_after)
        provenance = {
            "run_id": run_id, "kind": "revert", "reverts_edit": edit_id, "base_model": str(Path(model_dir).absolute()),
            "fingerprint_before": fp_before, "parent_run": (store.run(run_id) or {}).get("parent_run"),
            "database": str(store.path.absolute()), "log_head": {"event": head["count"], "hash": head["hash"]},
            "edits": [{"id": rev_id, "subject": edit["subject"], "method": "revert", "status": "applied",
                       "prompt": f"revert {edit_id}", "target": "", "expectations": []}],
        }  # fmt: skip
        save_model(model, out, provenance)
        status = "ok"
        return {"run_id": run_id, "edit_id": rev_id, "reverted": edit_id, "also_reverted": sharing, "modes": modes,
                "fingerprint_before": fp_before, "fingerprint_after": fp_after, "saved_to": str(out)}  # fmt: skip
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        store.end_run(
            run_id,
            status,
            fingerprint_after=model.fingerprint() if status == "ok" else None,
            saved_to=str(out) if status == "ok" else None,
            error=error,
        )


def _remove_attachments(
    store: Store, registry: Any, model: Any, model_dir: str | Path, edit_id: str,
    attached: list[dict[str, Any]], changes: dict[str, Any], modes: dict[str, str],
) -> None:  # fmt: skip
    """Take an edit's attachments off ``model``: uninstall the ones it holds; subtract the
    weight deltas of the ones a ``merged`` save folded into its weights."""
    import torch

    from .attachments import uninstall
    from .editing import WeightChange
    from .specs import load_object

    merged = {m.get("digest") for m in (read_model_record(model_dir) or {}).get("merged_attachments", [])}
    for i, rec in enumerate(attached):
        key = f"attachment:{i}:{rec['kind']}"
        live = next((a for a in model.attachments if a.digest() == rec["digest"]), None)
        if live is not None:
            uninstall(model, live)
            modes[key] = "removed"
            continue
        if rec["digest"] not in merged:
            raise UsageError(
                f"the model in {model_dir} does not hold edit {edit_id}'s {rec['kind']} attachment",
                "it was reverted already, or the model does not descend from that edit (kedsl log --model DIR)",
            )
        tensors, config, kind, method = store.load_attachment(rec["blob"])
        impl = dict(registry.method(method).attachments).get(kind)
        if impl is None:
            raise UsageError(f"method `{method}` no longer declares `{kind}` attachments; cannot rebuild edit {edit_id}'s")
        att = load_object(impl).from_state(tensors, config)
        deltas = att.merged_deltas(model) or {}
        with torch.no_grad():
            for name, delta in deltas.items():
                p = model.parameter(name)
                before = changes[name].before if name in changes else p.detach().to("cpu", copy=True)
                p.sub_(delta.to(device=p.device, dtype=p.dtype))
                changes[name] = WeightChange(name, before, p.detach().to("cpu", copy=True))
        modes[key] = "unmerged (subtracted)"
        log.warning("edit %s's %s was merged into the weights: subtracted its delta (not bit-exact)", edit_id, kind)


# -- replay ----------------------------------------------------------------------------------------
def replay(store: Store, run_id: str, out_dir: str | Path, *, argv: list[str] | None = None) -> dict[str, Any]:
    """Rerun a recorded ``apply`` run's script, with its seed and policy, on its recorded
    base model (checked by fingerprint first); report whether the result matches."""
    import tempfile

    from . import api
    from .model.loading import load_model
    from .registry import get_registry

    run = store.run(run_id)
    if run is None:
        raise UsageError(f"no run {run_id} in {store.path}", "list runs with `kedsl log`")
    if (run.get("kind") or "apply") not in ("apply", "replay") or not run.get("script_text"):
        raise UsageError(f"run {run_id} is a {run.get('kind')} run: only script runs (apply) can be replayed")
    registry = get_registry()
    with tempfile.TemporaryDirectory(prefix="kedsl-replay-") as tmp:
        script = Path(tmp) / "replayed.ke"
        script.write_text(run["script_text"], encoding="utf-8")
        checked = api.load_checked(script, registry)
        # A local directory by its resolved path (the script's may be relative to another
        # working directory); anything else (embedded alias, GGUF, hub id) by its name.
        local = run.get("model_source") == "local" and run.get("model_path")
        ref = run["model_path"] if local else run["model_ref"]
        model = load_model(ref, api.model_settings(checked.model), registry)
        if model.fingerprint() != run["fingerprint_before"]:
            raise ModelError(
                f"the base model {ref} has changed since run {run_id}: fingerprint {model.fingerprint()[:16]}, "
                f"the log records {run['fingerprint_before'][:16]}",
                "restore the base model the run used; replay needs the same starting weights",
            )
        recorded_versions = json.loads(run.get("versions") or "{}")
        report = api.apply(
            script, db=store.path, out=out_dir, on_fail=run.get("on_fail") or None, seed=run.get("seed") or 0,
            model=model, registry=registry, argv=argv if argv is not None else sys.argv,
            record={"kind": "replay", "replay_of": run_id},
        )  # fmt: skip
    from .executor import versions

    now = versions(registry)
    return {
        "run_id": report.run_id,
        "replay_of": run_id,
        "fingerprint_recorded": run.get("fingerprint_after"),
        "fingerprint_replayed": report.fingerprint_after,
        "matches": report.fingerprint_after == run.get("fingerprint_after"),
        "saved_to": str(report.saved_to) if report.saved_to else None,
        "version_differences": {k: [recorded_versions.get(k), now.get(k)] for k in now if recorded_versions.get(k) != now.get(k)},
    }


# -- export ------------------------------------------------------------------------------------------
EXPORT_FORMATS = ("jsonl", "csv", "html")


def export(store: Store, fmt: str = "jsonl", run_id: str | None = None) -> str:
    """An audit report of every run (or one run): JSON lines, CSV (one row per edit and
    metric) or a single self-contained HTML page."""
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format `{fmt}`", "use jsonl, csv or html")
    runs = [run_record(store, run_id, with_events=True)] if run_id else [
        run_record(store, r["id"], with_events=True) for r in store.runs()
    ]
    check = verify_log(store)
    if fmt == "jsonl":
        return _export_jsonl(runs, check)
    if fmt == "csv":
        return _export_csv(runs)
    return _export_html(runs, check, store)


def _export_jsonl(runs: list[dict[str, Any]], check: Verification) -> str:
    lines = [canonical_json({"type": "verification", **check.to_dict()})]
    for run in runs:
        lines.append(canonical_json({"type": "run", **{k: v for k, v in run.items() if k not in ("edits", "events")}}))
        for e in run["edits"]:
            lines.append(canonical_json({"type": "edit", **{k: v for k, v in e.items() if k != "metrics"}}))
            for m in e["metrics"]:
                lines.append(canonical_json({"type": "metric", "run_id": run["id"], **m}))
        for ev in run["events"]:
            lines.append(canonical_json({"type": "event", "run_id": run["id"], **ev}))
    return "\n".join(lines) + "\n"


_CSV_COLUMNS = [
    "run_id", "run_kind", "run_status", "started", "user", "host", "script_path", "script_sha256", "model_ref",
    "fingerprint_before", "fingerprint_after", "parent_run", "edit_id", "seq", "subject", "prompt", "target",
    "method", "params", "edit_status", "seconds", "outcome_sha256", "metric", "value", "op", "threshold", "passed",
]  # fmt: skip


def _export_csv(runs: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for run in runs:
        base = {
            "run_id": run["id"], "run_kind": run.get("kind"), "run_status": run["status"], "started": run["started"],
            "user": run["user"], "host": run["host"], "script_path": run.get("script_path"),
            "script_sha256": run.get("script_sha256"), "model_ref": run.get("model_ref"),
            "fingerprint_before": run.get("fingerprint_before"), "fingerprint_after": run.get("fingerprint_after"),
            "parent_run": run.get("parent_run"),
        }  # fmt: skip
        if not run["edits"]:
            w.writerow(base)
        for e in run["edits"]:
            req = e.get("request") or {}
            row = dict(
                base, edit_id=e["id"], seq=e["seq"], subject=e["subject"], prompt=req.get("prompt"),
                target=req.get("target"), method=e["method"], params=canonical_json(e.get("params")),
                edit_status=e["status"], seconds=e["seconds"], outcome_sha256=e.get("outcome_sha256"),
            )  # fmt: skip
            if not e["metrics"]:
                w.writerow(row)
            for m in e["metrics"]:
                w.writerow(dict(row, metric=m["metric"], value=m["value"], op=m["op"], threshold=m["threshold"], passed=m["passed"]))
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;word-break:break-all}
.ok{color:#116611;font-weight:bold}.bad{color:#b00;font-weight:bold}.banner{padding:.75em 1em;border-radius:4px;margin:1em 0}
.banner.ok{background:#e8f5e8}.banner.bad{background:#fbeaea}pre{background:#f7f7f7;padding:.75em;overflow-x:auto;font-size:.85em}
"""


def _export_html(runs: list[dict[str, Any]], check: Verification, store: Store) -> str:
    e = html.escape

    def kv_table(pairs: list[tuple[str, Any]]) -> str:
        rows = "".join(f"<tr><th>{e(k)}</th><td class=mono>{e('' if v is None else str(v))}</td></tr>" for k, v in pairs)
        return f"<table>{rows}</table>"

    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>kedsl audit report: {e(store.path.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>kedsl audit report</h1><p>Database <code>{e(str(store.path.absolute()))}</code>; "
        f"{len(runs)} run(s) shown, newest first.</p>",
    ]
    if check.ok:
        parts.append(
            f"<div class='banner ok'>Log verified: {check.events} events, hash chain intact; head "
            f"<code>{e(str(check.head.get('hash', '')))}</code>. Tables match the log; outcome blobs match their hashes.</div>"
        )
    else:
        items = "".join(f"<li>{e(f.message)}</li>" for f in check.findings if f.level == "error")
        parts.append(f"<div class='banner bad'>Log verification FAILED:<ul>{items}</ul></div>")
    notes = [f.message for f in check.findings if f.level == "note"]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    # Summary table.
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th>kind</th><th>status</th><th>started</th><th>user@host</th>"
                 "<th>model</th><th>edits applied</th><th>descends from</th></tr>")  # fmt: skip
    for r in runs:
        applied = sum(1 for x in r["edits"] if x["status"] == "applied")
        cls = "ok" if r["status"] == "ok" else "bad"
        parts.append(
            f"<tr><td><a href='#{e(r['id'])}'>{e(r['id'])}</a></td><td>{e(str(r.get('kind') or 'apply'))}</td>"
            f"<td class={cls}>{e(r['status'])}</td><td>{e(_when(r['started']))}</td>"
            f"<td>{e(str(r['user']))}@{e(str(r['host']))}</td><td>{e(str(r.get('model_ref') or ''))}</td>"
            f"<td>{applied}/{len(r['edits'])}</td><td>{e(str(r.get('parent_run') or ''))}</td></tr>"
        )
    parts.append("</table>")
    for r in runs:
        parts.append(f"<h2 id='{e(r['id'])}'>Run {e(r['id'])}</h2>")
        parts.append(kv_table([
            ("kind", r.get("kind") or "apply"), ("status", r["status"]), ("started", _when(r["started"])),
            ("ended", _when(r.get("ended"))), ("user", r["user"]), ("host", r["host"]),
            ("command", " ".join(r["argv"]) if isinstance(r.get("argv"), list) else r.get("argv")),
            ("working directory", r.get("cwd")), ("script", r.get("script_path")),
            ("script SHA-256", r.get("script_sha256")), ("seed", r.get("seed")), ("on_fail", r.get("on_fail")),
            ("base model", r.get("model_ref")), ("model source", r.get("model_source")),
            ("fingerprint before", r.get("fingerprint_before")), ("fingerprint after", r.get("fingerprint_after")),
            ("descends from run", r.get("parent_run")), ("saved to", r.get("saved_to")),
            ("reverts edit", r.get("reverts_edit")), ("replay of", r.get("replay_of")), ("error", r.get("error")),
            ("versions", canonical_json(r.get("versions"))),
        ]))  # fmt: skip
        if r["edits"]:
            parts.append("<h3>Edits</h3><table><tr><th>edit</th><th>subject</th><th>prompt</th><th>target</th>"
                         "<th>method</th><th>parameters</th><th>status</th><th>seconds</th><th>metrics</th></tr>")  # fmt: skip
            for x in r["edits"]:
                req = x.get("request") or {}
                metrics = "<br>".join(
                    f"{e(m['metric'])} = {e(_fmt(m['value']))}"
                    + (f" ({e(str(m['op']))} {e(_fmt(m['threshold']))}) " if m.get("op") else " ")
                    + ("<span class=ok>pass</span>" if m["passed"] else "<span class=bad>FAIL</span>")
                    for m in x["metrics"]
                )
                parts.append(
                    f"<tr><td class=mono>{e(x['id'])}</td><td>{e(str(x['subject']))}</td><td>{e(str(req.get('prompt', '')))}</td>"
                    f"<td>{e(str(req.get('target', '')))}</td><td>{e(x['method'])}</td>"
                    f"<td class=mono>{e(canonical_json(x.get('params')))}</td><td>{e(x['status'])}</td>"
                    f"<td>{x['seconds']:.2f}</td><td>{metrics}</td></tr>"
                )
            parts.append("</table>")
        if r.get("script_text"):
            parts.append(f"<h3>Script</h3><pre>{e(r['script_text'])}</pre>")
        parts.append("<details><summary>Events</summary><table><tr><th>#</th><th>kind</th><th>at</th><th>hash</th></tr>")
        for ev in r["events"]:
            parts.append(f"<tr><td>{ev['id']}</td><td>{e(ev['kind'])}</td><td>{e(_when(ev['at']))}</td><td class=mono>{e(ev['hash'])}</td></tr>")
        parts.append("</table></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def _when(ts: Any) -> str:
    if ts is None:
        return ""
    import datetime

    return datetime.datetime.fromtimestamp(float(ts), tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def open_for_reading(db: str | Path) -> Store:
    """Open an existing database read-only (the audit commands never write)."""
    return Store.open(db, create=False, readonly=True)


__all__ = [
    "Finding", "Verification", "verify_log", "verify_model", "expected_fingerprint", "lineage", "show",
    "run_record", "edit_record", "revert", "replay", "export", "open_for_reading", "StoreError",
]  # fmt: skip
