"""The provenance attestation saved with every model, and the checks against it.

Every save writes ``kedsl.intoto.json`` into the model directory: a DSSE envelope holding
an in-toto statement (``https://in-toto.io/Statement/v1``) whose subject is every other
file of the directory with its SHA-256, and whose predicate is SLSA provenance v1
(``https://slsa.dev/provenance/v1``):

- ``buildDefinition.externalParameters``: the run kind, the script (path, SHA-256,
  text), seed, ``on_fail`` policy, and for a revert or replay the edit or run it undoes
  or repeats;
- ``buildDefinition.resolvedDependencies``: the base model (its kedsl fingerprint as
  the digest), the earlier runs of its lineage (the fingerprint each produced), the data
  files the runs read and the trained editors they used, each with its SHA-256;
- ``runDetails.builder.version``: kedsl, torch, transformers and every plugin's version;
- ``runDetails.byproducts``: the audit log's head when the model was saved, and every edit
  of the lineage (request, method, parameters, status, metric results, outcome blob).

The log records the same file digests (event ``saved_files``), so ``verify --model``
names a changed, missing or added file with or without a signature. Signed with a key
(:mod:`kedsl.provenance.signing`), the envelope carries a DSSE signature and the
directory a ``model.sig`` over every file, the envelope included; then a database
rewritten after the save no longer matches what was signed. Torch-free.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..files import file_sha256
from ..records import canonical_json
from .signing import (
    SIGNATURE_FILE, SignatureInvalid, Signer, envelope, envelope_payload, sign_directory, sign_directory_keyless,
    verify_directory, verify_envelope,
)  # fmt: skip
from .queries import read_model_record
from .store import Store

if TYPE_CHECKING:
    from .verify import Verification

log = logging.getLogger(__name__)

STATEMENT_FILE = "kedsl.intoto.json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:kedsl:build-type:edit-run:v1"
BUILDER_ID = "urn:kedsl:builder"
#: Files of a model directory its statement cannot list: itself and the signature over it.
NOT_IN_SUBJECT = (STATEMENT_FILE, SIGNATURE_FILE)
#: Paths model signing leaves out by default; left out here too, so both cover the same files.
_GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")


def directory_digests(directory: str | os.PathLike[str]) -> dict[str, str]:
    """The SHA-256 of every file under ``directory`` (relative POSIX paths), except the
    statement and the signature."""
    root = Path(directory)
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirs[:] = [d for d in dirs if d not in _GIT_PATHS]
        for name in files:
            rel = (rel_dir / name).as_posix()
            if rel in NOT_IN_SUBJECT or rel in _GIT_PATHS:
                continue
            out[rel] = file_sha256(Path(dirpath) / name)
    return dict(sorted(out.items()))


def compare_files(actual: dict[str, str], expected: dict[str, str], against: str) -> list[str]:
    """One message per file that differs from ``expected``: changed, missing or added."""
    problems = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            problems.append(f"{name} is missing (the {against} lists it)")
        elif name not in expected:
            problems.append(f"{name} was added after the save (the {against} does not list it)")
        elif actual[name] != expected[name]:
            problems.append(f"{name} was changed: SHA-256 {actual[name][:16]}, the {against} records {expected[name][:16]}")
    return problems


# -- building the statement ----------------------------------------------------------------------
def _loads(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value


def lineage_runs(store: Store, run_id: str) -> list[dict[str, Any]]:
    """``run_id`` and the runs its input model came from (``parent_run``), newest first."""
    runs, seen = [], set()
    current: str | None = run_id
    while current and current not in seen:
        seen.add(current)
        run = store.run(current)
        if run is None:
            break
        runs.append(run)
        current = run.get("parent_run")
    return runs


def edit_descriptor(store: Store, edit: dict[str, Any]) -> dict[str, Any]:
    """One edit as an in-toto resource descriptor (its outcome blob as the digest)."""
    metrics = [
        {k: m[k] for k in ("metric", "value", "op", "threshold", "passed", "n")}
        for m in store.metric_results(edit["id"])
    ]
    annotations = {
        "run": edit["run_id"], "seq": edit["seq"], "subject": edit["subject"], "request": _loads(edit["request"]),
        "method": edit["method"], "params": _loads(edit["params"]), "status": edit["status"], "metrics": metrics,
        "attachments": _loads(edit.get("attachments") or "[]"), "error": edit.get("error"),
        "data_sha256": edit.get("data_sha256"), "data_row": edit.get("data_row"),
    }  # fmt: skip
    out: dict[str, Any] = {"name": f"edit:{edit['id']}", "annotations": annotations}
    if edit.get("outcome_sha256"):
        out["digest"] = {"sha256": edit["outcome_sha256"]}
    return out


def _editors(edits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trained editors the edits used (MEND, SERAC record ``editor`` and its SHA-256)."""
    found: dict[str, dict[str, Any]] = {}
    for e in edits:
        info = _loads(e.get("info") or "{}") or {}
        if isinstance(info, dict) and info.get("editor") and info.get("editor_sha256"):
            found[info["editor_sha256"]] = {"name": f"editor:{info['editor']}", "digest": {"sha256": info["editor_sha256"]},
                                            "annotations": {"method": e["method"]}}  # fmt: skip
    return list(found.values())


def lineage_record(store: Store, run_id: str) -> dict[str, Any]:
    """What the statement says about the runs behind a model, rebuilt from the store the
    same way when verifying (so a rewritten database shows up as a difference)."""
    runs = lineage_runs(store, run_id)
    edits = [e for r in reversed(runs) for e in store.edits(r["id"])]
    base = runs[-1] if runs else {}
    deps: list[dict[str, Any]] = [{
        "name": "model:base", "uri": str(base.get("model_ref") or ""), "digest": {"sha256": base.get("fingerprint_before") or ""},
        "annotations": {"source": base.get("model_source"), "digest_is": "kedsl fingerprint of the weights"},
    }]  # fmt: skip
    for r in runs[1:]:
        deps.append({"name": f"run:{r['id']}", "digest": {"sha256": r.get("fingerprint_after") or ""},
                     "annotations": {"kind": r.get("kind"), "script_sha256": r.get("script_sha256"),
                                     "fingerprint_before": r.get("fingerprint_before")}})  # fmt: skip
    for r in reversed(runs):
        for d in store.data_files(r["id"]):
            deps.append({"name": f"data:{d['path']}", "digest": {"sha256": d["sha256"]},
                         "annotations": {"run": r["id"], "format": d.get("format"), "rows": d.get("rows"), "size": d.get("size")}})  # fmt: skip
    deps += _editors(edits)
    return {"dependencies": deps, "edits": [edit_descriptor(store, e) for e in edits]}


def _run_parameters(run: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """What a run was given (kind, script, seed, policy) and the versions it ran with, as
    the statement records them."""
    external = {
        "kind": run.get("kind") or "apply",
        "script": {"path": run.get("script_path"), "sha256": run.get("script_sha256"), "text": run.get("script_text")},
        "seed": run.get("seed"), "on_fail": run.get("on_fail"),
        "reverts_edit": run.get("reverts_edit"), "replay_of": run.get("replay_of"),
    }  # fmt: skip
    versions = _loads(run.get("versions") or "{}") or {}
    flat = {k: str(v) for k, v in versions.items() if k != "plugins" and v is not None}
    flat.update({f"plugin:{k}": str(v) for k, v in (versions.get("plugins") or {}).items()})
    return external, flat


def build_statement(store: Store, run_id: str, files: dict[str, str], fingerprint: str) -> dict[str, Any]:
    """The in-toto statement of a model directory holding ``files`` (name -> SHA-256)
    saved by ``run_id`` with weights of ``fingerprint``."""
    run = store.run(run_id) or {}
    lineage = lineage_record(store, run_id)
    head = store.head()
    started = datetime.datetime.fromtimestamp(run.get("started") or 0, datetime.timezone.utc)
    external, version = _run_parameters(run)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": sha}} for name, sha in sorted(files.items())],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {"fingerprint_after": fingerprint, "user": run.get("user"), "host": run.get("host")},
                "resolvedDependencies": lineage["dependencies"],
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": version},
                "metadata": {"invocationId": run_id, "startedOn": started.isoformat().replace("+00:00", "Z")},
                "byproducts": [
                    {"name": "audit-log-head", "digest": {"sha256": head["hash"]}, "annotations": {"event": head["count"]}},
                    *lineage["edits"],
                ],
            },
        },
    }


def _payload_sha256(found: tuple[dict[str, Any], dict[str, Any]]) -> str:
    """The SHA-256 of the statement bytes an envelope holds (what the log records)."""
    return hashlib.sha256(envelope_payload(found[0])).hexdigest()


def write_attestation(
    store: Store, run_id: str, directory: Path, final_path: Path, fingerprint: str, signer: Signer | None = None
) -> None:
    """Write the statement of ``directory`` (the files a save of ``run_id`` wrote, about
    to become ``final_path``), record its file digests in the log, and sign it and the
    directory when ``signer`` is given."""
    files = directory_digests(directory)
    payload = canonical_json(build_statement(store, run_id, files, fingerprint)).encode()
    _write_envelope(directory, envelope(payload, signer.key if signer else None))
    store.record_saved_files(run_id, final_path, files, hashlib.sha256(payload).hexdigest())
    if signer is not None:
        sign_directory(directory, signer.path)
        store.record_signed(final_path, signer.key_id, run_id)


def _write_envelope(directory: Path, env: dict[str, Any]) -> None:
    (directory / STATEMENT_FILE).write_text(json.dumps(env, indent=2) + "\n", encoding="utf-8")


class UnreadableStatement(Exception):
    """A model directory's statement file exists but is not a readable DSSE envelope."""


def read_statement(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(envelope, statement)`` of a model directory; None when it has no statement;
    :class:`UnreadableStatement` when the file is not an envelope of a JSON statement."""
    path = Path(directory) / STATEMENT_FILE
    if not path.is_file():
        return None
    try:
        env = json.loads(path.read_text(encoding="utf-8"))
        statement = json.loads(envelope_payload(env))
        if not isinstance(statement, dict):
            raise ValueError("the payload is not a JSON object")
        return env, statement
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # bad JSON, bad base64, not a dict
        raise UnreadableStatement(f"{STATEMENT_FILE} is not a readable attestation ({exc})") from None


def sign_saved(store: Store, directory: str | os.PathLike[str], signer: Signer | None) -> dict[str, Any]:
    """Sign a saved model directory after the fact (``kedsl sign``): only when every file
    is still what the log recorded at save, so that nothing changed since gets signed.
    Without ``signer``, keyless with sigstore (the statement is then covered by
    ``model.sig`` only)."""
    d = Path(directory).absolute()
    run_id = ((read_model_record(d) or {}).get("provenance") or {}).get("run_id")
    recorded = store.saved_files(run_id, d) if run_id else None
    try:
        found = read_statement(d)
    except UnreadableStatement as exc:
        raise UsageError(f"{d} is not what run {run_id} saved, so kedsl will not sign it: {exc}") from None
    if recorded is None or found is None:
        raise UsageError(f"{d} was saved without per-file records (by an older kedsl, or not by kedsl)",
                         "replay its run (kedsl replay RUN --out DIR --sign KEY) to get a signable directory")  # fmt: skip
    problems = compare_files(directory_digests(d), recorded["files"], "log")
    payload = envelope_payload(found[0])
    if _payload_sha256(found) != recorded["statement_sha256"]:
        problems.append(f"{STATEMENT_FILE} was changed: its statement is not the one the log recorded")
    if problems:
        raise UsageError(f"{d} is not what run {run_id} saved, so kedsl will not sign it: " + "; ".join(problems),
                         "restore the directory, or replay the run")  # fmt: skip
    if signer is None:
        sign_directory_keyless(d)
        store.record_signed(d, "sigstore", run_id)
        return {"path": str(d), "run_id": run_id, "key_id": "sigstore", "files": len(recorded["files"])}
    _write_envelope(d, envelope(payload, signer.key))
    sign_directory(d, signer.path)
    store.record_signed(d, signer.key_id, run_id)
    return {"path": str(d), "run_id": run_id, "key_id": signer.key_id, "files": len(recorded["files"])}


# -- verifying ------------------------------------------------------------------------------------
def verify_files(store: Store, model_dir: Path, run_id: str, result: "Verification") -> bool:
    """Every file of ``model_dir`` against the digests the log recorded when ``run_id``
    saved it; False when a file differs. A save without per-file records is a note."""
    recorded = store.saved_files(run_id, model_dir)
    if recorded is None:
        result.note(f"the log has no per-file record of {model_dir} (saved by an older kedsl): only the weights are checked")
        return True
    problems = compare_files(directory_digests(model_dir), recorded["files"], "log")
    try:
        found = read_statement(model_dir)
    except UnreadableStatement as exc:
        found, problems = None, problems + [str(exc)]
    else:
        if found is None:
            problems.append(f"{STATEMENT_FILE} is missing")
        elif _payload_sha256(found) != recorded["statement_sha256"]:
            problems.append(f"{STATEMENT_FILE} holds another statement than the one the log recorded for this save")
    for p in problems:
        result.error(f"{model_dir}: {p} (changed outside kedsl)")
    return not problems


def verify_signed(
    store: Store,
    model_dir: Path,
    run_id: str | None,
    result: "Verification",
    public_key: str | os.PathLike[str] | None = None,
    identity: str | None = None,
    oidc_issuer: str | None = None,
) -> None:
    """Check a signed model directory: the attestation's signature (with ``public_key``),
    the directory's ``model.sig`` (model signing, with the key or a sigstore identity),
    every file against the signed statement, and the database against the signed lineage."""
    from .signing import load_public_key

    key = load_public_key(public_key) if public_key is not None else None  # a key error before anything else
    try:
        found = read_statement(model_dir)
    except UnreadableStatement as exc:
        result.error(f"{model_dir}: {exc}: it was changed after signing")
        return
    if found is None:
        result.error(f"{model_dir} has no {STATEMENT_FILE}: it carries no attestation", category="signature")
        return
    if not (model_dir / SIGNATURE_FILE).is_file():
        result.error(f"{model_dir} has no {SIGNATURE_FILE}: it was not signed (kedsl sign DIR --key KEY)", category="signature")
        return
    env, statement = found
    if key is not None:
        try:
            verify_envelope(env, key)
        except SignatureInvalid as exc:
            result.error(f"{model_dir}/{STATEMENT_FILE}: {exc}", category="signature")
            return
    try:
        verify_directory(model_dir, public_key, identity=identity, oidc_issuer=oidc_issuer)
        signed_files_ok = True
    except SignatureInvalid as exc:
        result.error(f"{model_dir}: {exc}", category="signature")
        return
    except ValueError:
        signed_files_ok = False  # named file by file below, from the signed statement
    if key is None:  # keyless: the statement is trusted through model.sig, which covers it
        if not signed_files_ok:
            result.error(f"{model_dir}: the files differ from what {SIGNATURE_FILE} signed")
    _verify_statement(store, model_dir, run_id, statement, result)


def _verify_statement(store: Store, model_dir: Path, run_id: str | None, statement: dict[str, Any], result: "Verification") -> None:
    predicate = statement.get("predicate") or {}
    if statement.get("_type") != STATEMENT_TYPE or statement.get("predicateType") != PREDICATE_TYPE:
        result.error(f"{model_dir}/{STATEMENT_FILE} is not a kedsl provenance statement")
        return
    signed_run = ((predicate.get("runDetails") or {}).get("metadata") or {}).get("invocationId")
    subject = {s["name"]: s["digest"]["sha256"] for s in statement.get("subject") or []}
    problems = compare_files(directory_digests(model_dir), subject, "signed attestation")
    if run_id is not None and signed_run != run_id:
        result.error(f"{model_dir}: the signed attestation is of run {signed_run}, but this directory's kedsl.json names "
                     f"run {run_id}: an attestation of another model was copied here")  # fmt: skip
    for p in problems:
        result.error(f"{model_dir}: {p}")
    if signed_run is None or store.run(signed_run) is None:
        result.error(f"the database has no run {signed_run}, which the signed attestation of {model_dir} records")
        return
    _verify_lineage(store, signed_run, predicate, result)


def _verify_lineage(store: Store, run_id: str, predicate: dict[str, Any], result: "Verification") -> None:
    """The database against the lineage the signature covers: every edit, every
    dependency, and the audit log's head at save time."""
    signed_by_name = {
        d["name"]: d
        for d in (predicate.get("buildDefinition") or {}).get("resolvedDependencies", [])
        + (predicate.get("runDetails") or {}).get("byproducts", [])
    }
    head = signed_by_name.pop("audit-log-head", None)
    if head is not None and store.event_hash_at(head["annotations"]["event"]) != head["digest"]["sha256"]:
        result.error(f"the log's event {head['annotations']['event']} is not the one that was signed: "
                     "the database was rewritten after the model was signed", head["annotations"]["event"])  # fmt: skip
    external, version = json.loads(canonical_json(_run_parameters(store.run(run_id) or {})))
    signed_external = (predicate.get("buildDefinition") or {}).get("externalParameters") or {}
    changed = sorted(k for k in set(external) | set(signed_external) if external.get(k) != signed_external.get(k))
    if version != ((predicate.get("runDetails") or {}).get("builder") or {}).get("version"):
        changed.append("versions")
    if changed:
        result.error(f"run {run_id} in the database differs from the signed attestation ({', '.join(changed)}): "
                     "the database was rewritten after signing")  # fmt: skip
    now = lineage_record(store, run_id)
    in_db = {d["name"]: d for d in now["dependencies"] + now["edits"]}
    for name in sorted(set(signed_by_name) | set(in_db)):
        signed, current = signed_by_name.get(name), in_db.get(name)
        if signed is None:
            result.error(f"the database has {name}, which the signed attestation does not: it was added after signing")
        elif current is None:
            result.error(f"the signed attestation records {name}, which the database no longer has")
        elif json.loads(canonical_json(current)) != signed:
            fields = sorted(k for k in set(signed.get("annotations", {})) | set(current.get("annotations", {}))
                            if signed.get("annotations", {}).get(k) != json.loads(canonical_json(current)).get("annotations", {}).get(k))  # fmt: skip
            if signed.get("digest") != current.get("digest"):
                fields.append("digest")
            result.error(f"{name} in the database differs from the signed attestation ({', '.join(fields) or 'content'}): "
                         "the database was rewritten after signing")  # fmt: skip


def save_attested(
    store: Store,
    run_id: str,
    model: Any,
    out: Path,
    provenance: dict[str, Any],
    *,
    fingerprint: str | None = None,
    mode: str | None = None,
    signer: Signer | None = None,
) -> Path:
    """Save ``model`` to ``out`` (:func:`kedsl.model.saving.save_model`) with its
    provenance statement, the log's record of every file, and, with ``signer``, the
    signatures; the one way every kind of run saves a model (imports torch)."""
    from ..model.saving import save_model

    def finish(tmp: Path, fp: str) -> None:
        write_attestation(store, run_id, tmp, out, fp, signer)

    return save_model(model, out, provenance, fingerprint=fingerprint, mode=mode, finish=finish)
