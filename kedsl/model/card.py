"""The model card (``README.md``, Hugging Face style) of a saved kedsl model directory.

It is rendered from the same record as ``kedsl.json`` (the fingerprint, the run id, the
edits with their metric results, the log anchor), so the two never disagree. The card
is deterministic (no clock), so saving the same weights twice gives the same bytes.
Torch-free: plain text formatting only.
"""
from __future__ import annotations

import json
from typing import Any

CARD = "README.md"


def _yaml_str(value: Any) -> str:
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid YAML scalar


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_model_card(record: dict[str, Any]) -> str:
    """The card for a saved model, from its ``kedsl.json`` record."""
    prov = record.get("provenance") or {}
    base = record.get("base") or {}
    edits = prov.get("edits") or []
    run_id = prov.get("run_id")
    head = prov.get("log_head") or {}
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- kedsl",
        "- knowledge-editing",
        f"kedsl_fingerprint: {_yaml_str(record.get('fingerprint', ''))}",
    ]
    if run_id:
        lines.append(f"kedsl_run: {_yaml_str(run_id)}")
    if base.get("ref"):
        lines.append(f"kedsl_base_model: {_yaml_str(base['ref'])}")
    lines += ["---", "", f"# Edited model ({base.get('ref') or 'unknown base'})", ""]
    lines.append(
        f"This directory was written by kedsl {record.get('kedsl_version', '')}: "
        "the base model below with the knowledge edits listed here. "
        "It loads with `transformers` as usual (`AutoModelForCausalLM.from_pretrained(dir)`)."
    )
    lines += ["", "## Provenance", "", "| field | value |", "| --- | --- |"]
    rows = [
        ("base model", f"{base.get('ref', '')} (source: {base.get('source', '')})"),
        ("run", run_id),
        ("run kind", prov.get("kind")),
        ("script", prov.get("script")),
        ("script SHA-256", prov.get("script_sha256")),
        ("fingerprint before", prov.get("fingerprint_before")),
        ("fingerprint (these weights)", record.get("fingerprint")),
        ("descends from run", prov.get("parent_run")),
        ("log anchor", f"event {head['event']} hash {head['hash']}" if head else None),
        ("database", prov.get("database")),
    ]
    for field, value in rows:
        if value:
            lines.append(f"| {field} | `{_cell(value)}` |")
    attachments = record.get("attachments") or []
    if attachments:
        lines += [
            "",
            "## Attachments",
            "",
            "Edits that are not weight changes (adapters, codebooks, in-context memories) live in "
            "`attachments/`; kedsl installs them when it loads this directory "
            "(plain `from_pretrained` gives the weights without them).",
            "",
            "| folder | kind | method | digest |",
            "| --- | --- | --- | --- |",
        ]
        for a in attachments:
            lines.append(f"| `{_cell(a.get('path'))}` | {_cell(a.get('kind'))} | {_cell(a.get('method'))} | `{_cell(a.get('digest'))}` |")
    lines += ["", "## Edits", ""]
    if not edits:
        lines.append("No edits are recorded for this directory.")
    else:
        lines += ["| # | edit id | subject | prompt | new target | method | status |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for i, e in enumerate(edits, 1):
            lines.append(
                f"| {i} | `{_cell(e.get('id'))}` | {_cell(e.get('subject'))} | {_cell(e.get('prompt'))} | "
                f"{_cell(e.get('target'))} | {_cell(e.get('method'))} | {_cell(e.get('status'))} |"
            )
        results = [(i, e, x) for i, e in enumerate(edits, 1) for x in e.get("expectations") or []]
        lines += ["", "## Metric results", ""]
        if not results:
            lines.append("No expectations were measured.")
        else:
            lines += ["| # | metric | value | threshold | result |", "| --- | --- | --- | --- | --- |"]
            for i, _e, x in results:
                threshold = "reported only" if x.get("op") is None else f"{x['op']} {_number(x.get('threshold'))}"
                verdict = "pass" if x.get("passed") else "FAIL"
                lines.append(f"| {i} | {_cell(x.get('metric'))} | {_number(x.get('value'))} | {threshold} | {verdict} |")
    lines += [
        "",
        "## Checking this directory",
        "",
        "```",
        f"kedsl verify --model {'<this directory>'}" + (f" --db {prov['database']}" if prov.get("database") else ""),
        "```",
        "",
        "recomputes the fingerprint of these weights, compares it with the one the audit log "
        "records for this directory, and checks the log's hash chain.",
        "",
    ]
    return "\n".join(lines)
