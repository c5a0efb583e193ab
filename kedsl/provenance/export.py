"""Audit reports of the provenance store: JSON lines, CSV (one row per edit and metric)
or one self-contained HTML page for a person to read. Torch-free."""
from __future__ import annotations

import csv
import html
import io
from typing import Any

from ..errors import UsageError
from ..records import canonical_json
from .queries import format_time, run_record
from .store import Store
from .verify import Verification, verify_log

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
    "data_sha256", "data_row",
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
                data_sha256=e.get("data_sha256"), data_row=e.get("data_row"),
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
        # Fields a run does not have (a revert has no script, an apply reverts nothing) are left out.
        rows = "".join(f"<tr><th>{e(k)}</th><td class=mono>{e(str(v))}</td></tr>" for k, v in pairs if v not in (None, "", "null"))
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
    notes = [f.message for f in check.findings if f.level in ("warning", "note")]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    parts += _failures_html(runs)
    parts += _lineage_html(runs, store)
    # Summary table.
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th>kind</th><th>status</th><th>started</th><th>user@host</th>"
                 "<th>model</th><th>edits applied</th><th>descends from</th></tr>")  # fmt: skip
    for r in runs:
        applied = sum(1 for x in r["edits"] if x["status"] == "applied")
        cls = "ok" if r["status"] == "ok" else "bad"
        parts.append(
            f"<tr><td><a href='#{e(r['id'])}'>{e(r['id'])}</a></td><td>{e(str(r.get('kind') or 'apply'))}</td>"
            f"<td class={cls}>{e(r['status'])}</td><td>{e(format_time(r['started']))}</td>"
            f"<td>{e(str(r['user']))}@{e(str(r['host']))}</td><td>{e(str(r.get('model_ref') or ''))}</td>"
            f"<td>{applied}/{len(r['edits'])}</td><td>{e(str(r.get('parent_run') or ''))}</td></tr>"
        )
    parts.append("</table>")
    for r in runs:
        parts.append(f"<h2 id='{e(r['id'])}'>Run {e(r['id'])}</h2>")
        parts.append(kv_table([
            ("kind", r.get("kind") or "apply"), ("status", r["status"]), ("started", format_time(r["started"])),
            ("ended", format_time(r.get("ended"))), ("user", r["user"]), ("host", r["host"]),
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
        if r.get("kind") == "revert" and r.get("script_text"):
            parts.append(f"<p><b>Recompute:</b> this revert ran the script of the batch's run again without edit "
                         f"<code>{e(str(r.get('reverts_edit')))}</code> (a batch is one update: its members cannot be "
                         "subtracted one by one).</p>")  # fmt: skip
        parts += _saved_models_html(r["id"], store)
        if r.get("script_text"):
            parts.append(f"<h3>Script</h3><pre>{e(r['script_text'])}</pre>")
        parts.append("<details><summary>Events</summary><table><tr><th>#</th><th>kind</th><th>at</th><th>hash</th></tr>")
        for ev in r["events"]:
            parts.append(f"<tr><td>{ev['id']}</td><td>{e(ev['kind'])}</td><td>{e(format_time(ev['at']))}</td><td class=mono>{e(ev['hash'])}</td></tr>")
        parts.append("</table></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _failures_html(runs: list[dict[str, Any]]) -> list[str]:
    """Everything that did not go as written: runs that did not end ok, edits that were not
    applied, expectations that failed."""
    e = html.escape
    rows = []
    for r in runs:
        if r["status"] != "ok":
            rows.append((r["id"], "run", r["status"], str(r.get("error") or "")))
        for x in r["edits"]:
            if x["status"] != "applied":
                rows.append((x["id"], f"edit {x['subject']!r}", x["status"], str(x.get("error") or "")))
            for m in x["metrics"]:
                if not m["passed"]:
                    limit = f" ({m['op']} {_fmt(m['threshold'])})" if m.get("op") else ""
                    rows.append((x["id"], f"edit {x['subject']!r}", "expectation FAILED", f"{m['metric']} = {_fmt(m['value'])}{limit}"))
    out = ["<h2 id=failures>Failures</h2>"]
    if not rows:
        return out + ["<p class=ok>No failed runs, edits or expectations.</p>"]
    out.append(f"<p class=bad>{len(rows)} failure(s).</p><table><tr><th>id</th><th>what</th><th>status</th><th>detail</th></tr>")
    out += [f"<tr><td class=mono>{e(i)}</td><td>{e(w)}</td><td class=bad>{e(st)}</td><td>{e(d)}</td></tr>" for i, w, st, d in rows]
    return out + ["</table>"]


def _lineage_html(runs: list[dict[str, Any]], store: Store) -> list[str]:
    """For each saved model: the chain from the base model through every run that made it."""
    from .attestation import lineage_runs

    e = html.escape
    out = ["<h2 id=lineage>Lineage of the saved models</h2>"]
    saved = [r for r in runs if r.get("saved_to")]
    if not saved:
        return out + ["<p>No run saved a model.</p>"]
    for r in saved:
        chain = list(reversed(lineage_runs(store, r["id"])))
        steps = [f"<li>base model <code>{e(str(chain[0].get('model_ref')))}</code>, fingerprint "
                 f"<code>{e(str(chain[0].get('fingerprint_before'))[:16])}</code></li>"]  # fmt: skip
        for c in chain:
            applied = sum(1 for x in store.edits(c["id"]) if x["status"] == "applied")
            steps.append(f"<li><a href='#{e(c['id'])}'>{e(c['id'])}</a> ({e(str(c.get('kind') or 'apply'))}, {applied} edit(s) "
                         f"applied) &rarr; fingerprint <code>{e(str(c.get('fingerprint_after'))[:16])}</code></li>")  # fmt: skip
        out.append(f"<h3>{e(str(r['saved_to']))}</h3><ol>{''.join(steps)}</ol>")
    return out


def _saved_models_html(run_id: str, store: Store) -> list[str]:
    """What the log recorded about each directory the run saved: its files, its
    attestation, and the keys it was signed with."""
    import json

    e = html.escape
    saves: dict[str, dict[str, Any]] = {}
    for ev in store.events(run_id):
        if ev["kind"] in ("saved_files", "signed"):
            payload = json.loads(ev["payload"])
            entry = saves.setdefault(payload["path"], {"files": None, "keys": []})
            if ev["kind"] == "saved_files":
                entry.update(files=payload["files"], statement=payload["statement_sha256"])
            else:
                entry["keys"].append(payload["key_id"])
    out = []
    for path, entry in saves.items():
        signed = ", ".join(k[:16] for k in entry["keys"]) if entry["keys"] else "not signed"
        files = entry["files"] or {}
        out.append(f"<h3>Saved model {e(path)}</h3>")
        out.append("<p>Signed with key(s): <b>" + e(signed) + "</b>. This report does not check signatures: "
                   f"<code>kedsl verify --model {e(path)} --key PUB</code> does.</p>")  # fmt: skip
        out.append("<details><summary>" + f"{len(files)} file(s) recorded at save, attestation statement SHA-256 "
                   f"<code>{e(str(entry.get('statement'))[:16])}</code></summary><table><tr><th>file</th><th>SHA-256</th></tr>")  # fmt: skip
        out += [f"<tr><td class=mono>{e(n)}</td><td class=mono>{e(h)}</td></tr>" for n, h in files.items()]
        out.append("</table></details>")
    return out


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
