"""Changing recorded history: :func:`revert` removes exactly one edit's outcome from a
saved model; :func:`replay` reruns a recorded script on its recorded base model. Both are
runs of their own in the provenance store (kinds ``revert`` and ``replay``)."""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ModelError, UsageError
from ..provenance.queries import lineage, read_model_record
from ..provenance.store import Store
from ..registry import Registry, get_registry
from ..registry.loader import software_versions
from ..registry.specs import load_object
from .scripts import apply, load_checked, model_settings

log = logging.getLogger(__name__)


def revert(
    store: Store,
    edit_id: str,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    force: bool = False,
    argv: list[str] | None = None,
    registry: Registry | None = None,
    sign: str | Path | None = None,
) -> dict[str, Any]:
    """Remove exactly ``edit_id``'s outcome from the model in ``model_dir``; save the result
    to ``out_dir`` and record it as a run of kind ``revert``.

    A parameter that still holds the edit's ``after`` value bit-exactly gets its
    ``before`` value back bit-exactly; one that later edits changed too gets the edit's
    delta subtracted (``mode: subtracted`` in the record, and a log warning).
    A member of a batch (edits that share one outcome: MEMIT, AlphaEdit, any method whose
    spec supports batches) is removed by recomputing: see :func:`_revert_batch_member`.
    ``registry`` defaults to the installed plugins; ``sign`` a private key that signs the result.
    """
    import torch

    from ..model.journal import WeightChange
    from ..model.loading import load_saved_model
    from ..provenance.attestation import save_attested
    from ..provenance.signing import Signer

    edit = store.edit(edit_id)
    if edit is None:
        raise UsageError(f"no edit {edit_id} in {store.path}", "list edits with `kedsl log --model DIR`")
    if edit["status"] != "applied":
        raise UsageError(f"edit {edit_id} was {edit['status']}: it is in no saved model, there is nothing to revert")
    attached = json.loads(edit.get("attachments") or "[]")
    if not edit["outcome_sha256"] and not attached:
        raise UsageError(f"edit {edit_id} changed no weights and added no attachment: there is nothing to revert")
    out = Path(out_dir).expanduser().absolute()
    if out == Path(model_dir).expanduser().absolute():
        raise UsageError("--out must differ from --model", "revert writes a new directory and keeps the original")
    # Edits of one batch share one outcome: one member is removed by recomputing the batch.
    sharing = store.edits_sharing_outcome(edit)
    if sharing:
        return _revert_batch_member(store, edit, sharing, model_dir, out, argv=argv, registry=registry, sign=sign)
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
    signer = Signer.from_file(sign) if sign is not None else None
    outcome = store.load_outcome(edit["outcome_sha256"]) if edit["outcome_sha256"] else {}
    registry = registry or get_registry()
    model = load_saved_model(model_dir, registry)
    fp_before = model.fingerprint()
    run_id = store.begin_run(
        kind="revert",
        reverts_edit=edit_id,
        argv=argv if argv is not None else sys.argv,
        cwd=os.getcwd(),
        versions=software_versions(registry),
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
                current = model.read_weight(name).to("cpu", copy=True)  # where it lives (device maps too)
                if current.dtype == after.dtype and torch.equal(current, after):
                    model.write_weight(name, before)
                    modes[name] = "restored"
                else:
                    model.write_weight(name, current - (after.float() - before.float()).to(current.dtype))
                    modes[name] = "subtracted"
                    log.warning("%s was changed again after edit %s: subtracted its delta (not bit-exact)", name, edit_id)
                changes[name] = WeightChange(name, current, model.read_weight(name).to("cpu", copy=True))
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
        save_attested(store, run_id, model, out, provenance, signer=signer)
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

    from ..model.attachments import uninstall
    from ..model.journal import WeightChange

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


def _revert_batch_member(
    store: Store, edit: dict[str, Any], batch: list[str], model_dir: str | Path, out: Path, *,
    argv: list[str] | None, registry: Registry | None, sign: str | Path | None,
) -> dict[str, Any]:  # fmt: skip
    """Remove one member of a batch by recomputing: the members share one update, so no
    part of it belongs to one member alone. The run that made the batch is run again from
    what the store recorded (script text, seed, ``on_fail`` policy, the base model checked
    by fingerprint, the data files' kept content) with that one edit left out, so the
    result is what a fresh run of the script without the edit gives on the same machine.
    Recorded as a run of kind ``revert``. Only the directory that run saved can be
    recomputed this way (later runs would have to be recomputed too)."""
    run = store.run(edit["run_id"]) or {}
    made_by = ((read_model_record(model_dir) or {}).get("provenance") or {}).get("run_id")
    if made_by != run.get("id"):
        raise UsageError(
            f"edit {edit['id']} is one of a batch of {len(batch) + 1} edits made by run {run.get('id')}; removing one member "
            f"recomputes that run, but {model_dir} was saved by run {made_by}",
            f"revert it from the directory run {run.get('id')} saved (kedsl log --model DIR), then apply the later scripts again",
        )  # fmt: skip
    if not run.get("script_text"):
        raise UsageError(f"run {run.get('id')} recorded no script: its batch cannot be recomputed")
    skipped = _skipped_edits(store, run)
    skip = skipped | {_original_index(edit["seq"], skipped)}
    report = _rerun(store, run, out, record={"kind": "revert", "reverts_edit": edit["id"]}, skip=frozenset(skip),
                    argv=argv, registry=registry, sign=sign)  # fmt: skip
    return {"run_id": report.run_id, "edit_id": None, "reverted": edit["id"], "also_reverted": [], "recomputed": True,
            "batch": batch, "modes": {}, "fingerprint_before": report.fingerprint_before,
            "fingerprint_after": report.fingerprint_after, "saved_to": str(report.saved_to)}  # fmt: skip


def _original_index(seq: int, skipped: set[int]) -> int:
    """The index in the full script of the ``seq``-th edit a run left ``skipped`` out of."""
    kept = -1
    index = -1
    while kept < seq:
        index += 1
        if index not in skipped:
            kept += 1
    return index


def _skipped_edits(store: Store, run: dict[str, Any]) -> set[int]:
    """The indices of the script's edits a recomputing revert run left out (none for an
    apply run): its reverted edit, and those its own source run left out."""
    if run.get("kind") != "revert" or not run.get("reverts_edit"):
        return set()
    reverted = store.edit(run["reverts_edit"]) or {}
    source = store.run(reverted.get("run_id") or "") or {}
    skipped = _skipped_edits(store, source)
    return skipped | {_original_index(reverted["seq"], skipped)}


def _rerun(
    store: Store, run: dict[str, Any], out_dir: str | Path, *, record: dict[str, Any], skip: frozenset[int] = frozenset(),
    argv: list[str] | None = None, registry: Registry | None = None, sign: str | Path | None = None,
) -> Any:  # fmt: skip
    """Run a recorded run's script again, with its seed and policy, on its recorded base
    model (checked by fingerprint first), reading its data files from the content the store
    kept; leave out the planned edits in ``skip``. Returns the new run's report."""
    from ..model.loading import load_model

    registry = registry or get_registry()
    data_files = {d["path"]: store.data_blob(d["sha256"]) for d in store.data_files(run["id"])}
    with tempfile.TemporaryDirectory(prefix="kedsl-rerun-") as tmp:
        script = Path(tmp) / "rerun.ke"
        script.write_text(run["script_text"], encoding="utf-8")
        checked = load_checked(script, registry, data_files)
        # A local directory by its resolved path (the script's may be relative to another
        # working directory); anything else (embedded alias, GGUF, hub id) by its name.
        local = run.get("model_source") == "local" and run.get("model_path")
        ref = run["model_path"] if local else run["model_ref"]
        model = load_model(ref, model_settings(checked.model), registry)
        if model.fingerprint() != run["fingerprint_before"]:
            raise ModelError(
                f"the base model {ref} has changed since run {run['id']}: fingerprint {model.fingerprint()[:16]}, "
                f"the log records {run['fingerprint_before'][:16]}",
                "restore the base model the run used; rerunning needs the same starting weights",
            )
        return apply(
            script, db=store.path, out=out_dir, on_fail=run.get("on_fail") or None, seed=run.get("seed") or 0,
            model=model, registry=registry, argv=argv if argv is not None else sys.argv, record=record,
            data_files=data_files, sign=sign, skip=skip,
        )  # fmt: skip


def replay(
    store: Store, run_id: str, out_dir: str | Path, *, argv: list[str] | None = None, registry: Registry | None = None,
    sign: str | Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Rerun a recorded ``apply`` run's script, with its seed and policy, on its recorded
    base model (checked by fingerprint first); report whether the result matches. The data
    files the run read are read from the content the store kept, whatever the files hold now."""
    run = store.run(run_id)
    if run is None:
        raise UsageError(f"no run {run_id} in {store.path}", "list runs with `kedsl log`")
    if (run.get("kind") or "apply") not in ("apply", "replay") or not run.get("script_text"):
        raise UsageError(f"run {run_id} is a {run.get('kind')} run: only script runs (apply) can be replayed")
    registry = registry or get_registry()
    recorded_versions = json.loads(run.get("versions") or "{}")
    report = _rerun(store, run, out_dir, record={"kind": "replay", "replay_of": run_id}, argv=argv, registry=registry, sign=sign)
    now = software_versions(registry)
    return {
        "run_id": report.run_id,
        "replay_of": run_id,
        "fingerprint_recorded": run.get("fingerprint_after"),
        "fingerprint_replayed": report.fingerprint_after,
        "matches": report.fingerprint_after == run.get("fingerprint_after"),
        "saved_to": str(report.saved_to) if report.saved_to else None,
        "version_differences": {k: [recorded_versions.get(k), now.get(k)] for k in now if recorded_versions.get(k) != now.get(k)},
    }
