"""The provenance store's schema: its tables, the migrations that build and upgrade them
(schema version in ``PRAGMA user_version``), and how an event of the hash-chained log is
hashed. Torch-free."""
from __future__ import annotations

import hashlib
from typing import Any

import sqlite_utils

from ..records import canonical_json

SCHEMA_VERSION = 3
#: The "previous hash" of the first event.
GENESIS = "0" * 64

#: Run statuses. ``running`` stays on a run whose process died; the next writer on the
#: same host marks it ``interrupted``.
RUN_STATUSES = ("running", "ok", "expectations_failed", "aborted", "failed", "interrupted")


def _migrate_v1(db: sqlite_utils.Database) -> None:
    db["kedsl_meta"].create({"key": str, "value": str}, pk="key")
    db["runs"].create(
        {
            "id": str,
            "started": float,
            "ended": float,
            "status": str,
            "script_path": str,
            "script_text": str,
            "script_sha256": str,
            "argv": str,
            "user": str,
            "host": str,
            "versions": str,  # JSON: kedsl, torch, transformers, plugins
            "seed": int,
            "model_ref": str,
            "model_source": str,
            "fingerprint_before": str,
            "fingerprint_after": str,
            "saved_to": str,
            "parent_run": str,  # lineage: the run whose output fingerprint is our input
        },
        pk="id",
    )
    db["edits"].create(
        {
            "id": str,
            "run_id": str,
            "seq": int,
            "subject": str,
            "request": str,  # JSON
            "method": str,
            "params": str,  # JSON, after presets
            "status": str,  # applied | rolled_back | failed | skipped
            "seconds": float,
            "info": str,  # JSON, method diagnostics
            "outcome_sha256": str,
            "error": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["metric_results"].create(
        {
            "id": int,
            "edit_id": str,
            "metric": str,
            "value": float,
            "op": str,
            "threshold": float,
            "passed": int,
            "n": int,
            "details": str,
        },
        pk="id",
        foreign_keys=[("edit_id", "edits", "id")],
    )
    db["events"].create(
        {"id": int, "run_id": str, "at": float, "kind": str, "payload": str, "prev_hash": str, "hash": str},
        pk="id",
    )
    db["edits"].create_index(["run_id"])
    db["runs"].create_index(["fingerprint_after"])


def _migrate_v2(db: sqlite_utils.Database) -> None:
    """Run kinds (apply/revert/replay), crash bookkeeping, the log anchor."""
    runs = db["runs"]
    for column, kind in [
        ("kind", str),  # apply | revert | replay
        ("cwd", str),
        ("pid", int),
        ("on_fail", str),
        ("model_path", str),  # the resolved local path of the base model, when it has one
        ("reverts_edit", str),
        ("replay_of", str),
        ("error", str),
    ]:
        runs.add_column(column, kind)
    db.execute("UPDATE runs SET kind = 'apply' WHERE kind IS NULL")
    db["edits"].add_column("attachments", str)  # JSON list: {kind, method, digest, blob} per attachment
    db["events"].create_index(["run_id"])
    row = db.execute("SELECT COUNT(*), (SELECT hash FROM events ORDER BY id DESC LIMIT 1) FROM events").fetchone()
    db["kedsl_meta"].upsert_all(
        [{"key": "head_count", "value": str(row[0])}, {"key": "head_hash", "value": row[1] or GENESIS}], pk="key"
    )


def _migrate_v3(db: sqlite_utils.Database) -> None:
    """Edits from data files (``edits from``): the files a run read (their content kept as
    a blob), and the row of each edit."""
    db["data_files"].create(
        {
            "id": int,
            "run_id": str,
            "path": str,  # as the script writes it
            "file": str,  # the file read (absolute)
            "display": str,  # how messages named it
            "format": str,
            "layout": str,
            "sha256": str,  # of the bytes read; the blob <sha256>.data holds them
            "size": int,
            "rows": int,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["data_files"].create_index(["run_id"])
    db["edits"].add_column("data_sha256", str)
    db["edits"].add_column("data_row", int)  # from 1, as `kedsl check` numbers rows


MIGRATIONS = {1: _migrate_v1, 2: _migrate_v2, 3: _migrate_v3}

#: Columns of ``runs`` a caller may set through :meth:`Store.begin_run` / :meth:`Store.end_run`.
RUN_FIELDS = {
    "kind", "script_path", "script_text", "script_sha256", "argv", "cwd", "versions", "seed", "on_fail",
    "model_ref", "model_source", "model_path", "fingerprint_before", "fingerprint_after", "saved_to",
    "reverts_edit", "replay_of", "error",
}  # fmt: skip


def event_hash(event: dict[str, Any]) -> str:
    """The SHA-256 of an event's content and the previous event's hash."""
    content = {k: event[k] for k in ("id", "run_id", "at", "kind", "payload", "prev_hash")}
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()
