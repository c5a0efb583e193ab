"""The provenance store: what ran, on which model, with what outcome (SQLite via sqlite-utils).

Tables (schema version in ``PRAGMA user_version``, upgraded by :data:`MIGRATIONS`):

- ``kedsl_meta``: marks the file as a kedsl store (a foreign SQLite file is refused).
- ``runs``: one row per ``apply`` (script text and SHA-256, arguments, user, host, versions,
  model source and fingerprints before/after, status).
- ``edits``: one row per edit (request, method, resolved parameters, status, seconds,
  method info, outcome blob hash).
- ``metric_results``: one row per expectation measured (value, threshold, passed).
- ``events``: an append-only log; each row carries the SHA-256 of its content chained
  to the previous row's hash, so a later change to any row is detectable.

Outcome tensors are stored as content-addressed safetensors files in ``<db>.blobs/``
(never pickle). The file is opened in WAL mode with a busy timeout so that several
processes can write to it at once.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import socket
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

from .errors import StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000
GENESIS = "0" * 64


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _migrate_v1(db: sqlite_utils.Database) -> None:
    db["kedsl_meta"].create({"key": str, "value": str}, pk="key")
    db["runs"].create(
        {
            "id": str,
            "started": float,
            "ended": float,
            "status": str,  # running | ok | expectations_failed | aborted | failed
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
        {
            "id": int,
            "run_id": str,
            "at": float,
            "kind": str,
            "payload": str,
            "prev_hash": str,
            "hash": str,
        },
        pk="id",
    )
    db["edits"].create_index(["run_id"])
    db["runs"].create_index(["fingerprint_after"])


MIGRATIONS = {1: _migrate_v1}


class Store:
    """A kedsl provenance database. Use :meth:`open`."""

    def __init__(self, path: Path, db: sqlite_utils.Database):
        self.path = path
        self.db = db
        self.blob_dir = path.with_name(path.name + ".blobs")

    # -- opening -----------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, create: bool = True) -> "Store":
        path = Path(path)
        if path.exists():
            if path.is_dir():
                raise StoreError(f"{path} is a directory, not a kedsl database", "pass a file path with --db")
            with open(path, "rb") as fh:
                header = fh.read(16)
            if header and header != b"SQLite format 3\x00":
                raise StoreError(
                    f"{path} is not an SQLite database (it may be corrupted)",
                    "kedsl never overwrites it; pass another path with --db or restore the file from a backup",
                )
        elif not create:
            raise StoreError(f"no kedsl database at {path}", "run `kedsl apply` first, or pass --db PATH")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db = sqlite_utils.Database(conn)
            store = cls(path, db)
            store._prepare()
        except sqlite3.DatabaseError as exc:
            msg = str(exc)
            if "locked" in msg or "busy" in msg:
                raise StoreError(f"{path} is locked by another process ({msg})", "wait for it to finish and retry") from None
            raise StoreError(
                f"{path} is not a usable SQLite database ({msg})",
                "kedsl never overwrites it; pass another path with --db or restore the file from a backup",
            ) from None
        return store

    def _prepare(self) -> None:
        db = self.db
        tables = set(db.table_names())
        if tables and "kedsl_meta" not in tables:
            raise StoreError(
                f"{self.path} is an SQLite database that kedsl did not create (tables: {', '.join(sorted(tables)[:5])})",
                "kedsl never writes into foreign databases; pass another path with --db",
            )
        if db.journal_mode != "wal":
            db.enable_wal()
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this kedsl understands ({SCHEMA_VERSION})",
                "upgrade kedsl",
            )
        if version < SCHEMA_VERSION:
            with self._immediate():
                version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[v](db)
                    db.execute(f"PRAGMA user_version = {v}")
                if version == 0:
                    db["kedsl_meta"].insert({"key": "created", "value": str(time.time())})

    @contextmanager
    def _immediate(self) -> Iterator[None]:
        """A write transaction taken at once (BEGIN IMMEDIATE), so concurrent writers
        queue on the busy timeout instead of failing on a read-to-write upgrade."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # -- events ------------------------------------------------------------------
    def _append_event(self, run_id: str | None, kind: str, payload: dict[str, Any]) -> None:
        """Append one hash-chained event. Call inside a write transaction."""
        row = self.db.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        prev_id, prev_hash = (row[0], row[1]) if row else (0, GENESIS)
        event = {"id": prev_id + 1, "run_id": run_id, "at": time.time(), "kind": kind, "payload": _canonical(payload)}
        event["prev_hash"] = prev_hash
        event["hash"] = event_hash(event)
        self.db["events"].insert(event)

    # -- runs and edits ------------------------------------------------------------
    def begin_run(self, **fields: Any) -> str:
        run_id = fields.pop("id", None) or "run-" + uuid.uuid4().hex[:12]
        record = {
            "id": run_id,
            "started": time.time(),
            "status": "running",
            "user": _user(),
            "host": socket.gethostname(),
            **{k: _jsonish(v) for k, v in fields.items()},
        }
        if record.get("fingerprint_before"):
            parent = self.db.execute(
                "SELECT id FROM runs WHERE fingerprint_after = ? AND status != 'running' ORDER BY ended DESC LIMIT 1",
                [record["fingerprint_before"]],
            ).fetchone()
            record["parent_run"] = parent[0] if parent else None
        with self._immediate():
            self.db["runs"].insert(record, alter=False)
            self._append_event(run_id, "run_started", record)
        return run_id

    def end_run(self, run_id: str, status: str, **fields: Any) -> None:
        update = {"status": status, "ended": time.time(), **{k: _jsonish(v) for k, v in fields.items()}}
        with self._immediate():
            self.db["runs"].update(run_id, update)
            self._append_event(run_id, "run_ended", update)

    def record_edit(
        self,
        run_id: str,
        seq: int,
        subject: str,
        request: dict[str, Any],
        method: str,
        params: dict[str, Any],
        status: str,
        seconds: float,
        info: dict[str, Any],
        outcome_sha256: str | None,
        metrics: list[dict[str, Any]],
        error: str | None = None,
    ) -> str:
        edit_id = f"{run_id}-e{seq}"
        record = {
            "id": edit_id,
            "run_id": run_id,
            "seq": seq,
            "subject": subject,
            "request": _canonical(request),
            "method": method,
            "params": _canonical(params),
            "status": status,
            "seconds": seconds,
            "info": _canonical(info),
            "outcome_sha256": outcome_sha256,
            "error": error,
        }
        with self._immediate():
            self.db["edits"].insert(record)
            for m in metrics:
                self.db["metric_results"].insert({"edit_id": edit_id, **{k: _jsonish(v) for k, v in m.items()}})
            self._append_event(run_id, "edit", {**record, "metrics": metrics})
        return edit_id

    def save_outcome(self, changes: dict[str, Any]) -> str | None:
        """Store an outcome's exact before/after tensors as a content-addressed
        safetensors file; return its SHA-256 (None if nothing changed)."""
        if not changes:
            return None
        from safetensors.torch import save

        tensors = {}
        for name, ch in changes.items():
            tensors[f"before::{name}"] = ch.before.contiguous()
            tensors[f"after::{name}"] = ch.after.contiguous()
        data = save(tensors)
        digest = hashlib.sha256(data).hexdigest()
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        target = self.blob_dir / f"{digest}.safetensors"
        if not target.exists():
            tmp = target.with_suffix(f".tmp{os.getpid()}")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        return digest

    # -- reading -------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM runs ORDER BY started DESC"))

    def edits(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM edits WHERE run_id = ? ORDER BY seq", [run_id]))

    def metric_results(self, edit_id: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM metric_results WHERE edit_id = ? ORDER BY id", [edit_id]))


def event_hash(event: dict[str, Any]) -> str:
    """The SHA-256 of an event's content and the previous event's hash."""
    content = {k: event[k] for k in ("id", "run_id", "at", "kind", "payload", "prev_hash")}
    return hashlib.sha256(_canonical(content).encode()).hexdigest()


def _jsonish(v: Any) -> Any:
    if isinstance(v, (dict, list, tuple)):
        return _canonical(v)
    return v


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return os.environ.get("USER", "unknown")
