"""Verifying the provenance store and the models it recorded.

- :func:`verify_log` checks the event log's hash chain row by row, its anchor (so
  deleting the newest rows is caught too), that the ``runs``/``edits``/``metric_results``
  tables say exactly what the log says, and that every outcome blob still has its hash.
  Data files the runs read (``edits from``) are checked too: their kept content still has
  its hash (an error if not), and the file on disk still holds what the run read (a
  warning if it changed or is gone: the run and its replay use the kept content).
- :func:`verify_model` checks every file of a model directory against the SHA-256 the log
  recorded when the directory was written (naming a changed, missing or added file),
  recomputes its fingerprint and compares it with the fingerprint the log says that
  directory should have (it loads the model: torch); given a public key, it also checks
  the directory's signature and signed attestation (:mod:`kedsl.provenance.attestation`).

Limits, stated plainly: the chain proves the log was not edited *unless* the editor
rewrote every hash after the change and the anchor as well (anyone with write access to
the database can rebuild a consistent chain). What catches that is an anchor kept
elsewhere: every saved model directory carries the head hash at save time
(``kedsl.json`` ``provenance.log_head``, also in the model card), and ``kedsl verify``
prints the current head so it can be written down or published.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError, UsageError
from ..files import file_sha256 as _file_sha256
from .attestation import verify_files, verify_signed
from .queries import UnreadableRecord, read_model_record
from .signing import SIGNATURE_FILE
from .schema import GENESIS, event_hash
from .store import Store

log = logging.getLogger(__name__)

_RUN_COMPARED = (
    "kind", "status", "started", "ended", "script_path", "script_text", "script_sha256", "argv", "cwd", "user", "host",
    "pid", "versions", "seed", "on_fail", "model_ref", "model_source", "model_path", "fingerprint_before",
    "fingerprint_after", "saved_to", "parent_run", "reverts_edit", "replay_of", "error",
)  # fmt: skip
_METRIC_COMPARED = ("metric", "value", "op", "threshold", "passed", "n", "details")


@dataclass
class Finding:
    """One thing verification found: ``error`` fails it, ``warning`` and ``note`` do not."""

    level: str  # error | warning | note
    message: str
    event: int | None = None  # the first broken event row, when the finding is about one
    category: str = "content"  # content (log, tables, files) | signature (another key, not signed)


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

    @property
    def signature_failed(self) -> bool:
        return any(f.level == "error" and f.category == "signature" for f in self.findings)

    def error(self, message: str, event: int | None = None, category: str = "content") -> None:
        self.findings.append(Finding("error", message, event, category))

    def warning(self, message: str) -> None:
        self.findings.append(Finding("warning", message))

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
    _verify_data_files(store, events, result)
    _verify_blobs(store, result)
    _verify_attachment_blobs(store, result)
    interrupted = store.unfinished_runs()
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
    table_runs = {r["id"]: r for r in store.run_rows()}
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
    table_edits = {r["id"]: r for r in store.edit_rows()}
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
            for m in store.metric_results(edit_id)
        ]
        in_log = [tuple(m.get(c) for c in _METRIC_COMPARED) for m in metrics.get(edit_id, [])]
        if len(in_table) != len(in_log) or not all(
            all(_same(x, y) for x, y in zip(a, b)) for a, b in zip(in_table, in_log)
        ):
            result.error(f"edit {edit_id}: its metric results differ from the log (event {logged['_event']})")
    for edit_id in table_edits:
        result.error(f"edit {edit_id} is in the edits table but not in the log (added outside kedsl)")
    orphans = store.orphan_metric_results()
    if orphans:
        result.error(f"{orphans} metric result(s) belong to no edit in the log (added outside kedsl)")


def _verify_data_files(store: Store, events: list[dict[str, Any]], result: Verification) -> None:
    """The data_files table against the log; each kept content against its hash (errors);
    each file on disk against what its run read (warnings)."""
    logged = {}
    for e in events:
        if e["kind"] == "data_file":
            payload = json.loads(e["payload"])
            logged[payload["id"]] = dict(payload, _event=e["id"])
    rows = {r["id"]: r for r in store.data_file_rows()}
    for row_id, entry in logged.items():
        row = rows.pop(row_id, None)
        if row is None:
            result.error(f"data file {entry.get('path')!r} of run {entry.get('run_id')} is in the log (event {entry['_event']}) "
                         "but was deleted from the data_files table")  # fmt: skip
            continue
        for col, value in row.items():
            if col in entry and not _same(value, entry[col]):
                result.error(f"data file {row_id} of run {row['run_id']}: `{col}` in the data_files table differs from the log "
                             f"(event {entry['_event']})")  # fmt: skip
    for row_id, row in rows.items():
        result.error(f"data file {row_id} of run {row['run_id']} is in the data_files table but not in the log (added outside kedsl)")
    checked: dict[tuple[str, str], bool] = {}
    for entry in logged.values():
        sha, file = entry["sha256"], entry["file"]
        if (file, sha) in checked:
            continue
        checked[(file, sha)] = True
        _check_blob(store, store.data_blob_path(sha), sha, f"run {entry['run_id']}: the kept content of data file {entry['path']}", result)
        now = _file_sha256(Path(file)) if Path(file).is_file() else None
        if now is None:
            result.warning(f"data file {file} (read by run {entry['run_id']}) is gone; the store keeps what the run read "
                           "and `kedsl replay` uses that")  # fmt: skip
        elif now != sha:
            result.warning(f"data file {file} changed after run {entry['run_id']} read it (SHA-256 {sha[:16]} then, "
                           f"{now[:16]} now); the store keeps what the run read and `kedsl replay` uses that")  # fmt: skip


def _verify_blobs(store: Store, result: Verification) -> None:
    seen: set[str] = set()
    for row in store.edit_outcome_blobs():
        sha = row["outcome_sha256"]
        if sha in seen:
            continue
        seen.add(sha)
        _check_blob(store, store.blob_path(sha), sha, f"edit {row['id']}: its outcome blob", result)


def _verify_attachment_blobs(store: Store, result: Verification) -> None:
    for row in store.edit_attachment_records():
        for rec in json.loads(row["attachments"]):
            sha = rec.get("blob") if isinstance(rec, dict) else None
            if not sha:
                continue
            _check_blob(store, store.blob_path(sha), sha, f"edit {row['id']}: its {rec.get('kind')} attachment blob", result)


def _check_blob(store: Store, path: Path, sha: str, what: str, result: Verification) -> None:
    """An error when the blob ``what`` names is missing or no longer has its SHA-256."""
    if not path.is_file():
        result.error(f"{what} {path.name} is missing from {store.blob_dir}")
    elif _file_sha256(path) != sha:
        result.error(f"{what} {path.name} was changed (SHA-256 mismatch)")


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
    from ..model.loading import load_saved_model  # here, not above: verifying the log alone stays torch-free

    return load_saved_model(model_dir).fingerprint()


def verify_model(
    store: Store,
    model_dir: str | Path,
    result: Verification | None = None,
    *,
    public_key: str | Path | None = None,
    identity: str | None = None,
    oidc_issuer: str | None = None,
) -> Verification:
    """Check every file of ``model_dir`` against the digests the log recorded at save,
    recompute its fingerprint and compare it with the log's (imports torch); with
    ``public_key`` (or a sigstore ``identity`` and ``oidc_issuer``) also its signature,
    its signed attestation, and the database against the signed lineage."""
    result = result or Verification()
    d = Path(model_dir).absolute()
    if public_key is None and identity is None and (d / SIGNATURE_FILE).is_file():
        result.note(f"{d} is signed ({SIGNATURE_FILE}); its signature was not checked: pass --key PUB")
    try:
        expected = expected_fingerprint(store, model_dir)
    except UnreadableRecord as exc:  # a changed kedsl.json: a finding, not a usage error
        result.error(f"{d}: kedsl.json was changed outside kedsl ({exc.message})")
        if public_key is not None or identity is not None:  # the signed statement names its run and files
            verify_signed(store, d, None, result, public_key, identity, oidc_issuer)
        result.model = {"path": str(d), "actual": None, "matches": False}
        return result
    record = expected.pop("record")
    prov = (record or {}).get("provenance") or {}
    files_ok = verify_files(store, d, expected["run_id"], result)
    if public_key is not None or identity is not None:
        verify_signed(store, d, prov.get("run_id"), result, public_key, identity, oidc_issuer)
    head = prov.get("log_head")
    if head:
        if store.event_hash_at(head["event"]) != head["hash"]:
            result.error(
                f"the log no longer holds event {head['event']} with the hash {model_dir} was saved with: "
                "the log was rewritten or truncated after this model was saved",
                head["event"],
            )
    if not files_ok:  # the files that changed are named; loading changed files proves nothing more
        result.model = {**expected, "path": str(d), "actual": None, "matches": False}
        return result
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
    if not expected["matches"]:
        result.error(
            f"the weights in {model_dir} have fingerprint {actual[:16]}, but the log says run {expected['run_id']} "
            f"saved {expected['fingerprint'][:16]} there: the weights were changed outside kedsl"
        )
    return result
