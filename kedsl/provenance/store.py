"""The provenance store: what ran, on which model, with what outcome (SQLite via sqlite-utils).

Tables (schema version in ``PRAGMA user_version``, upgraded by the migrations of
:mod:`kedsl.provenance.schema`):

- ``kedsl_meta``: marks the file as a kedsl store (a foreign SQLite file is refused) and
  holds the *anchor* of the event log: ``head_count`` and ``head_hash``, updated in the
  same transaction as every event, so deleting the newest events is detectable too.
- ``runs``: one row per ``apply``, ``revert`` or ``replay`` (script text and SHA-256,
  arguments, working directory, user, host, pid, versions, seed, model source and
  fingerprints before/after, status, the run it descends from).
- ``edits``: one row per edit (request, method, resolved parameters, status, seconds,
  method info, outcome blob hash).
- ``metric_results``: one row per expectation measured (value, threshold, passed).
- ``data_files``: the data files a run's ``edits from`` statements read (path, the file
  read, format, SHA-256, size, rows); their content is kept as the blob
  ``<sha256>.data``, once per distinct content, so a replay does not depend on the file.
  An edit made from a row records the file's SHA-256 and the row (``data_sha256``,
  ``data_row``).
- ``events``: an append-only log; each row carries the SHA-256 of its content chained
  to the previous row's hash. Every write to the other tables is one transaction that
  also appends the event describing it, so the tables can be checked against the log
  (:mod:`kedsl.provenance.verify`).

Outcome tensors are stored as content-addressed safetensors files in ``<db>.blobs/``
(``before::NAME`` / ``after::NAME``; never pickle), written to a temporary name, flushed
and renamed, so a crash never leaves a partial blob under its final name.

The file is opened in WAL mode with a busy timeout (``$KEDSL_BUSY_TIMEOUT`` seconds,
default 30) so that several processes can write to it at once. Every SQL statement of
kedsl is in this class: the audit modules read through its methods. This module imports
no torch except in :meth:`Store.save_outcome` / :meth:`Store.load_outcome`.
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
from typing import Any, Callable, Iterator

import sqlite_utils

from ..errors import StoreError
from ..files import fsync_dir, pid_alive
from ..records import canonical_json
from .schema import GENESIS, MIGRATIONS, RUN_FIELDS, RUN_STATUSES, SCHEMA_VERSION, event_hash

__all__ = ["GENESIS", "SCHEMA_VERSION", "Store", "canonical_json", "event_hash"]

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_S = 30.0
SQLITE_HEADER = b"SQLite format 3\x00"

_NOT_OVERWRITTEN = "kedsl never overwrites it; pass another path with --db or restore the file from a backup"


def busy_timeout_s() -> float:
    """How long a writer waits for a lock: ``$KEDSL_BUSY_TIMEOUT`` seconds, default 30."""
    raw = os.environ.get("KEDSL_BUSY_TIMEOUT")
    if not raw:
        return DEFAULT_BUSY_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise StoreError(f"KEDSL_BUSY_TIMEOUT must be a number of seconds, not {raw!r}") from None
    return max(0.0, value)


class Store:
    """A kedsl provenance database. Use :meth:`open`."""

    def __init__(self, path: Path, db: sqlite_utils.Database, readonly: bool = False):
        self.path = path
        self.db = db
        self.readonly = readonly
        self.blob_dir = path.with_name(path.name + ".blobs")

    # -- opening -----------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, create: bool = True, readonly: bool = False) -> "Store":
        """Open (or create) the database at ``path``.

        Refuses, without writing a byte, anything that is not a kedsl store: a directory,
        a file that is not SQLite (corrupted), an SQLite file kedsl did not create, a
        newer schema. ``readonly`` opens for reading only (``log``, ``show``,
        ``verify``, ``export``): no migration, no write, ever.
        """
        path = Path(path)
        if path.exists():
            if path.is_dir():
                raise StoreError(f"{path} is a directory, not a kedsl database", "pass a file path with --db")
            try:
                with open(path, "rb") as fh:
                    header = fh.read(16)
            except OSError as exc:
                raise StoreError(f"cannot read {path}: {exc.strerror}") from None
            if header and header != SQLITE_HEADER:
                raise StoreError(f"{path} is not an SQLite database (it may be corrupted)", _NOT_OVERWRITTEN)
        elif not create or readonly:
            raise StoreError(f"no kedsl database at {path}", "run `kedsl apply` first, or pass --db PATH")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        timeout = busy_timeout_s()
        try:
            conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path} ({exc})", _NOT_OVERWRITTEN) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            if readonly:
                conn.execute("PRAGMA query_only = 1")
            store = cls(path, sqlite_utils.Database(conn), readonly=readonly)
            store._prepare()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise _store_error(path, exc) from None
        except BaseException:
            conn.close()
            raise
        return store

    def _prepare(self) -> None:
        db = self.db
        tables = set(db.table_names())
        if tables and "kedsl_meta" not in tables:
            raise StoreError(
                f"{self.path} is an SQLite database that kedsl did not create "
                f"(tables: {', '.join(sorted(tables)[:5])})",
                "kedsl never writes into foreign databases; pass another path with --db",
            )
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this kedsl understands ({SCHEMA_VERSION})",
                "upgrade kedsl",
            )
        if self.readonly:
            if not tables:
                raise StoreError(f"{self.path} is an empty file, not a kedsl database", "pass another path with --db")
            self.schema_version = version
            return
        if db.journal_mode != "wal":
            db.enable_wal()
        if version < SCHEMA_VERSION:
            with self._immediate():
                version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    log.info("upgrading %s to schema version %d", self.path, v)
                    MIGRATIONS[v](db)
                    db.execute(f"PRAGMA user_version = {v}")
                if version == 0:
                    db["kedsl_meta"].insert({"key": "created", "value": str(time.time())})
        self.schema_version = SCHEMA_VERSION

    @contextmanager
    def _immediate(self) -> Iterator[None]:
        """A write transaction taken at once (BEGIN IMMEDIATE), so concurrent writers
        queue on the busy timeout instead of failing on a read-to-write upgrade."""
        if self.readonly:
            raise RuntimeError("this store was opened read-only")
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise _store_error(self.path, exc) from None
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                conn.execute("ROLLBACK")
                raise _store_error(self.path, exc) from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- events ------------------------------------------------------------------
    def _append_event(self, run_id: str | None, kind: str, payload: dict[str, Any]) -> int:
        """Append one hash-chained event and move the anchor. Call inside a write transaction."""
        row = self.db.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        prev_id, prev_hash = (row[0], row[1]) if row else (0, GENESIS)
        event = {"id": prev_id + 1, "run_id": run_id, "at": time.time(), "kind": kind, "payload": canonical_json(payload)}
        event["prev_hash"] = prev_hash
        event["hash"] = event_hash(event)
        self.db["events"].insert(event)
        self.db["kedsl_meta"].upsert_all(
            [{"key": "head_count", "value": str(event["id"])}, {"key": "head_hash", "value": event["hash"]}], pk="key"
        )
        return event["id"]

    def head(self) -> dict[str, Any]:
        """The anchor: how many events the log has and the newest one's hash."""
        meta = {r["key"]: r["value"] for r in self.db.query("SELECT key, value FROM kedsl_meta")}
        return {"count": int(meta.get("head_count", 0)), "hash": meta.get("head_hash", GENESIS)}

    def events(self, run_id: str | None = None) -> list[dict[str, Any]]:
        if run_id is None:
            return list(self.db.query("SELECT * FROM events ORDER BY id"))
        return list(self.db.query("SELECT * FROM events WHERE run_id = ? ORDER BY id", [run_id]))

    # -- runs and edits ------------------------------------------------------------
    def begin_run(self, **fields: Any) -> str:
        """Record a run as started; returns its id. ``fields`` are :data:`RUN_FIELDS`."""
        _check_fields(fields)
        self.mark_interrupted_runs()
        run_id = "run-" + uuid.uuid4().hex[:12]
        record = {
            "id": run_id,
            "kind": "apply",
            "started": time.time(),
            "status": "running",
            "user": _user(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **{k: _jsonish(v) for k, v in fields.items()},
        }
        with self._immediate():
            if record.get("fingerprint_before"):
                record["parent_run"] = self.run_producing(record["fingerprint_before"])
            self.db["runs"].insert(record, alter=False)
            self._append_event(run_id, "run_started", record)
        return run_id

    def run_producing(self, fingerprint: str) -> str | None:
        """The newest finished run whose output model has ``fingerprint`` (lineage)."""
        row = self.db.execute(
            "SELECT id FROM runs WHERE fingerprint_after = ? AND status NOT IN ('running', 'failed', 'interrupted') "
            "ORDER BY ended DESC LIMIT 1",
            [fingerprint],
        ).fetchone()
        return row[0] if row else None

    def record_saving(self, run_id: str, path: str | Path, fingerprint: str) -> dict[str, Any]:
        """Record, before writing it, that ``run_id`` saves a model with ``fingerprint``
        to ``path``; returns the log anchor to write into the saved directory."""
        with self._immediate():
            self._append_event(run_id, "saving", {"path": str(path), "fingerprint": fingerprint})
            return self.head()

    def record_saved_files(self, run_id: str, path: str | Path, files: dict[str, str], statement_sha256: str) -> None:
        """Record the SHA-256 of every file a save of ``run_id`` wrote to ``path`` (before
        the directory is moved into place) and of its provenance statement."""
        with self._immediate():
            self._append_event(run_id, "saved_files", {"path": str(path), "files": files, "statement_sha256": statement_sha256})

    def record_signed(self, path: str | Path, key_id: str, run_id: str | None = None) -> None:
        """Record that the model directory ``path`` (saved by ``run_id``) was signed with the key ``key_id``."""
        with self._immediate():
            self._append_event(run_id, "signed", {"path": str(path), "key_id": key_id})

    def saved_files(self, run_id: str, path: str | Path) -> dict[str, Any] | None:
        """The newest ``saved_files`` record of ``run_id`` for ``path`` (else, for a
        directory moved since, the run's newest one; None when the save predates per-file
        records)."""
        records = [dict(json.loads(e["payload"]), event=e["id"]) for e in self.events(run_id) if e["kind"] == "saved_files"]
        same_path = [r for r in records if Path(r["path"]) == Path(path)]
        return (same_path or records or [None])[-1]

    def end_run(self, run_id: str, status: str, **fields: Any) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        _check_fields(fields)
        update = {"status": status, "ended": time.time(), **{k: _jsonish(v) for k, v in fields.items()}}
        with self._immediate():
            self.db["runs"].update(run_id, update)
            self._append_event(run_id, "run_ended", update)

    def mark_interrupted_runs(self) -> list[str]:
        """Mark runs of this host whose process is gone (killed, crashed) ``interrupted``."""
        host = socket.gethostname()
        stale = [
            r["id"]
            for r in self.db.query("SELECT id, pid FROM runs WHERE status = 'running' AND host = ?", [host])
            if r["pid"] and r["pid"] != os.getpid() and not pid_alive(r["pid"])
        ]
        for run_id in stale:
            with self._immediate():
                still = self.db.execute("SELECT status FROM runs WHERE id = ?", [run_id]).fetchone()
                if still and still[0] == "running":  # another process may have marked it
                    update = {"status": "interrupted", "ended": time.time()}
                    self.db["runs"].update(run_id, update)
                    self._append_event(run_id, "run_ended", update)
                    log.warning("run %s was interrupted (its process is gone)", run_id)
        return stale

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
        attachments: list[dict[str, Any]] | None = None,
        data_sha256: str | None = None,
        data_row: int | None = None,
    ) -> str:
        """Record one edit; ``data_sha256`` and ``data_row`` name the row of a data file
        (:meth:`record_data_file`) it was made from."""
        edit_id = f"{run_id}-e{seq}"
        record = {
            "id": edit_id,
            "run_id": run_id,
            "seq": seq,
            "subject": subject,
            "request": canonical_json(request),
            "method": method,
            "params": canonical_json(params),
            "status": status,
            "seconds": seconds,
            "info": canonical_json(info),
            "outcome_sha256": outcome_sha256,
            "error": error,
            "attachments": canonical_json(list(attachments or [])),
            "data_sha256": data_sha256,
            "data_row": data_row,
        }
        metric_rows = [{k: _jsonish(v) for k, v in m.items()} for m in metrics]
        with self._immediate():
            self.db["edits"].insert(record)
            for m in metric_rows:
                self.db["metric_results"].insert({"edit_id": edit_id, **m})
            self._append_event(run_id, "edit", {**record, "metrics": metric_rows})
        return edit_id

    def record_data_file(self, run_id: str, content: bytes, **fields: Any) -> str:
        """Record a data file ``run_id`` read (``path``, ``file``, ``display``, ``format``,
        ``layout``, ``rows``) and keep ``content`` as a blob; return its SHA-256."""
        sha = self._write_blob(content, self.data_blob_path)
        record = {"run_id": run_id, "sha256": sha, "size": len(content), **fields}
        with self._immediate():
            record["id"] = self.db["data_files"].insert(record).last_pk
            self._append_event(run_id, "data_file", record)
        return sha

    # -- blobs -----------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        """Where an outcome or attachment blob is (safetensors)."""
        return self.blob_dir / f"{sha256}.safetensors"

    def data_blob_path(self, sha256: str) -> Path:
        """Where a data file's kept content is."""
        return self.blob_dir / f"{sha256}.data"

    def data_blob(self, sha256: str) -> Path:
        """The kept content of a data file, after checking its SHA-256 (a changed or
        missing blob is a :class:`StoreError`)."""
        self._read_blob(sha256, "data file blob", self.data_blob_path)
        return self.data_blob_path(sha256)

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
        return self._write_blob(save(tensors))

    def _write_blob(self, data: bytes, path_of: Callable[[str], Path] | None = None) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        target = (path_of or self.blob_path)(digest)
        if not target.exists():
            tmp = self.blob_dir / f".{digest}.tmp{os.getpid()}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            fsync_dir(self.blob_dir)
        return digest

    def _read_blob(self, sha256: str, what: str = "blob", path_of: Callable[[str], Path] | None = None) -> bytes:
        path = (path_of or self.blob_path)(sha256)
        if not path.is_file():
            raise StoreError(f"the {what} {path} is missing", "restore the .blobs directory beside the database")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StoreError(f"the {what} {path} was changed after it was written (SHA-256 mismatch)")
        return data

    def save_attachment(self, attachment: Any) -> str:
        """Store an attachment's content (tensors, with kind, method and config in the
        safetensors metadata) as a content-addressed blob; return its SHA-256."""
        from safetensors.torch import save

        tensors, config = attachment.state()
        meta = {"kind": attachment.kind, "method": attachment.method, "config": canonical_json(config)}
        data = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=meta)
        return self._write_blob(data)

    def load_attachment(self, sha256: str) -> tuple[dict[str, Any], dict[str, Any], str, str]:
        """``(tensors, config, kind, method)`` of an attachment blob (SHA-256 checked)."""
        from safetensors import safe_open
        from safetensors.torch import load

        tensors = load(self._read_blob(sha256, "attachment blob"))
        path = self.blob_path(sha256)
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return tensors, json.loads(meta.get("config", "{}")), meta.get("kind", ""), meta.get("method", "")

    def load_outcome(self, sha256: str) -> dict[str, tuple[Any, Any]]:
        """An outcome's tensors, ``{parameter: (before, after)}``, after checking the
        blob's SHA-256 (a changed or missing blob is a :class:`StoreError`)."""
        from safetensors.torch import load

        path = self.blob_path(sha256)
        tensors = load(self._read_blob(sha256, "outcome blob"))
        out: dict[str, tuple[Any, Any]] = {}
        for key in tensors:
            side, _, name = key.partition("::")
            if side == "before":
                out[name] = (tensors[key], tensors[f"after::{name}"])
            elif side not in ("after",):
                raise StoreError(f"the outcome blob {path} holds an unknown entry {key!r}")
        return out

    # -- reading -------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM runs ORDER BY started DESC"))

    def run(self, run_id: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]))
        return rows[0] if rows else None

    def edit(self, edit_id: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM edits WHERE id = ?", [edit_id]))
        return rows[0] if rows else None

    def edits(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM edits WHERE run_id = ? ORDER BY seq", [run_id]))

    def data_files(self, run_id: str) -> list[dict[str, Any]]:
        """The data files ``run_id`` read, in the order it recorded them."""
        if not self._has_data_files():
            return []  # a store of schema 2 opened read-only
        return list(self.db.query("SELECT * FROM data_files WHERE run_id = ? ORDER BY id", [run_id]))

    def _has_data_files(self) -> bool:
        return "data_files" in self.db.table_names()

    def metric_results(self, edit_id: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM metric_results WHERE edit_id = ? ORDER BY id", [edit_id]))

    def ids_starting_with(self, prefix: str) -> tuple[list[str], list[str]]:
        """The run ids and edit ids that begin with ``prefix`` (taken literally)."""
        like = prefix.replace("%", "").replace("_", "\\_") + "%"
        runs = [r[0] for r in self.db.execute("SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\'", [like])]
        edits = [r[0] for r in self.db.execute("SELECT id FROM edits WHERE id LIKE ? ESCAPE '\\'", [like])]
        return runs, edits

    def edits_sharing_outcome(self, edit: dict[str, Any]) -> list[str]:
        """The other applied edits of ``edit``'s run with the same outcome (weights or
        attachments): the members of one batch."""
        return [r[0] for r in self.db.execute(
            "SELECT id FROM edits WHERE run_id = ? AND id != ? AND status = 'applied' AND "
            "((outcome_sha256 IS NOT NULL AND outcome_sha256 = ?) OR (attachments != '[]' AND attachments = ?))",
            [edit["run_id"], edit["id"], edit["outcome_sha256"], edit["attachments"]],
        )]  # fmt: skip

    # -- reading for verification: the tables as they are ------------------------------
    def unfinished_runs(self) -> list[str]:
        """Runs still ``running`` or ``interrupted``."""
        return [r["id"] for r in self.db.query("SELECT id FROM runs WHERE status IN ('running', 'interrupted')")]

    def run_rows(self) -> list[dict[str, Any]]:
        """Every row of ``runs``, in table order."""
        return list(self.db.query("SELECT * FROM runs"))

    def edit_rows(self) -> list[dict[str, Any]]:
        """Every row of ``edits``, in table order."""
        return list(self.db.query("SELECT * FROM edits"))

    def orphan_metric_results(self) -> int:
        """How many metric results belong to no edit."""
        return self.db.execute("SELECT COUNT(*) FROM metric_results WHERE edit_id NOT IN (SELECT id FROM edits)").fetchone()[0]

    def data_file_rows(self) -> list[dict[str, Any]]:
        """Every row of ``data_files``, in table order."""
        return list(self.db.query("SELECT * FROM data_files")) if self._has_data_files() else []

    def edit_outcome_blobs(self) -> list[dict[str, Any]]:
        """``id`` and ``outcome_sha256`` of every edit with an outcome blob, by id."""
        return list(self.db.query("SELECT id, outcome_sha256 FROM edits WHERE outcome_sha256 IS NOT NULL ORDER BY id"))

    def edit_attachment_records(self) -> list[dict[str, Any]]:
        """``id`` and ``attachments`` (JSON) of every edit that added attachments."""
        return list(self.db.query("SELECT id, attachments FROM edits WHERE attachments IS NOT NULL AND attachments != '[]'"))

    def event_hash_at(self, event_id: int) -> str | None:
        """The hash the log holds for event ``event_id`` (None if there is no such event)."""
        row = self.db.execute("SELECT hash FROM events WHERE id = ?", [event_id]).fetchone()
        return row[0] if row else None


def _store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    msg = str(exc)
    if "locked" in msg or "busy" in msg:
        return StoreError(
            f"{path} is locked by another process ({msg}; waited {busy_timeout_s():g}s)",
            "wait for the other kedsl process to finish and retry, or raise KEDSL_BUSY_TIMEOUT (seconds)",
        )
    return StoreError(f"{path} is not a usable kedsl database ({msg})", _NOT_OVERWRITTEN)


def _check_fields(fields: dict[str, Any]) -> None:
    unknown = set(fields) - RUN_FIELDS
    if unknown:
        raise TypeError(f"unknown run field(s): {', '.join(sorted(unknown))}")


def _jsonish(v: Any) -> Any:
    if isinstance(v, (dict, list, tuple)):
        return canonical_json(v)
    return v


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return os.environ.get("USER", "unknown")
