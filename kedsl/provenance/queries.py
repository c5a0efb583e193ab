"""Reading the provenance store: one run or edit in full (``kedsl show``), the runs behind
a model directory (``kedsl log --model``), a saved directory's own record. Torch-free;
every query goes through :class:`~kedsl.provenance.store.Store`'s methods."""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .store import Store

_JSON_COLUMNS = {"argv", "versions", "request", "params", "info", "details", "attachments"}


def open_for_reading(db: str | Path) -> Store:
    """Open an existing database read-only (the audit commands never write)."""
    return Store.open(db, create=False, readonly=True)


class UnreadableRecord(UsageError):
    """A model directory's ``kedsl.json`` exists but cannot be read."""


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
        raise UnreadableRecord(f"{f} is not readable JSON ({exc})") from None


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
    if row.get("data_sha256"):  # made from a row of a data file: which file
        rec["data_file"] = next((d for d in store.data_files(row["run_id"]) if d["sha256"] == row["data_sha256"]), None)
    return rec


def run_record(store: Store, run_id: str, with_events: bool = False) -> dict[str, Any]:
    row = store.run(run_id)
    if row is None:
        raise UsageError(f"no run {run_id} in {store.path}", "list runs with `kedsl log`")
    rec = _decoded(row)
    rec["data_files"] = store.data_files(run_id)
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
    runs, edits = store.ids_starting_with(ident)
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


def format_time(ts: Any) -> str:
    """A stored timestamp (seconds since the epoch) as UTC text; empty for None."""
    if ts is None:
        return ""
    return datetime.datetime.fromtimestamp(float(ts), tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
