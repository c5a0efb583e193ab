"""The data files of ``edits from`` statements: which file a statement names, how it is
read (:mod:`kedsl.datafiles`, once per script), and how a row's cells become the fields
of an edit. Validating the fields (subjects in prompts, relations, duplicates) is the
checker's job. Torch-free.

Fields and their default columns: ``subject``, ``prompt`` (a free prompt that contains
the subject) or ``relation`` (an id or alias, resolved as in a written edit), ``target``,
``old``, ``paraphrases`` and ``locality`` (lists of prompts). JSON records in a layout
``kedsl bench`` reads take that layout's fields (:data:`LAYOUT_COLUMNS`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..datafiles import TABLE_FORMATS, DataFileError, Table, first_text, read_table, table_format

FIELDS = ("subject", "prompt", "relation", "target", "old", "paraphrases", "locality")

#: The columns each benchmark layout keeps a field in (the first one a file has is used;
#: a dotted name is a field inside an object). CounterFact's prompt is a template with
#: ``{}`` for the subject.
LAYOUT_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "zsre": {"subject": ("subject",), "prompt": ("src",), "target": ("alt",), "old": ("answers",),
             "paraphrases": ("rephrase",), "locality": ("loc",)},
    "knowedit": {"subject": ("subject",), "prompt": ("prompt",), "target": ("target_new",), "old": ("ground_truth",),
                 "paraphrases": ("rephrase_prompt", "rephrase"), "locality": ("locality",)},
    "counterfact_easyedit": {"subject": ("subject",), "prompt": ("prompt",), "target": ("target_new",),
                             "old": ("ground_truth",), "paraphrases": ("rephrase_prompt",), "locality": ("locality_prompt",)},
    "counterfact": {"subject": ("requested_rewrite.subject",), "prompt": ("requested_rewrite.prompt",),
                    "target": ("requested_rewrite.target_new",), "old": ("requested_rewrite.target_true",),
                    "paraphrases": ("paraphrase_prompts",), "locality": ("neighborhood_prompts",)},
}  # fmt: skip
TEMPLATE_LAYOUTS = ("counterfact",)
#: What may follow ``as``: a file format, or a benchmark layout of JSON records.
DATA_FORMATS = TABLE_FORMATS + tuple(LAYOUT_COLUMNS)


@dataclass(frozen=True)
class DataSource:
    """A data file as a run read it: the path as the script writes it, the file read, how
    messages name it, its format, its benchmark layout (None: plain columns), the SHA-256
    and size of its bytes, and its number of rows."""

    path: str
    file: str
    display: str
    format: str
    layout: str | None
    sha256: str
    size: int
    rows: int


@dataclass
class DataTable:
    """A data file read once: where from, its rows, and its bytes (for the audit trail)."""

    source: DataSource
    table: Table
    content: bytes


@dataclass
class DataRow:
    """One valid row, as the edit it stands for. ``paraphrases`` None means the row gives
    none (a relation's own paraphrases then apply, as in a written edit)."""

    row: int
    subject: str
    prompt: str | None
    relation: str | None
    target: str
    old: str | None
    paraphrases: list[str] | None
    locality: list[str]


def display_path(path: str, script_dir: str) -> str:
    """How messages name a data file: relative to the working directory when the script's
    own path is (``examples/facts.csv`` for ``edits from "facts.csv"`` in ``examples/x.ke``)."""
    p = os.path.expanduser(path)
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(script_dir, p))


def load_data(path: str, given_format: str | None, script_dir: str, override: str | os.PathLike[str] | None = None) -> DataTable:
    """Read the file an ``edits from "PATH"`` statement names, relative to ``script_dir``
    (or ``override``, the file to read instead: a replay reads the recorded content).
    Raises :class:`~kedsl.datafiles.DataFileError` for a file that cannot be read as a whole."""
    display = display_path(path, script_dir)
    file = Path(override) if override is not None else Path(display)
    layout = given_format if given_format in LAYOUT_COLUMNS else None
    fmt = given_format if given_format in TABLE_FORMATS else table_format(path)
    if layout is not None and fmt not in ("json", "jsonl", "parquet", "arrow"):
        fmt = "json"
    if not file.exists():
        where = f"relative to the script's folder ({script_dir or '.'})" if not os.path.isabs(os.path.expanduser(path)) else "an absolute path"
        raise DataFileError(f"no data file {display}", f"check the path: it is {where}", "data-file-missing")
    if file.is_dir():
        raise DataFileError(f"{display} is a directory; `edits from` reads one file",
                            "export a datasets folder to one file (Dataset.to_parquet or to_json)", "bad-data-file")  # fmt: skip
    if fmt is None:
        raise DataFileError(f"cannot tell the format of {display} from its name",
                            "name it .csv, .tsv, .jsonl, .json, .parquet or .arrow, or write `as csv` (tsv, jsonl, json, ...)",
                            "unknown-format")  # fmt: skip
    try:
        content = file.read_bytes()
    except OSError as exc:
        raise DataFileError(f"cannot read {display}: {exc.strerror or exc}", None, "bad-data-file") from None
    table = read_table(content, fmt, display, file)
    layout = layout or table.layout
    source = DataSource(path, str(file.absolute()), display, fmt, layout, hashlib.sha256(content).hexdigest(),
                        len(content), len(table.records))  # fmt: skip
    return DataTable(source, table, content)


def has_column(columns: set[str], name: str) -> bool:
    """Whether a file has column ``name`` (a dotted name: its first part)."""
    return name in columns or ("." in name and name.split(".", 1)[0] in columns)


def default_columns(columns: set[str], layout: str | None) -> dict[str, str]:
    """The column of each field the file has, by its layout's names or the field names."""
    names = LAYOUT_COLUMNS.get(layout or "", {f: (f,) for f in FIELDS})
    out = {}
    for f, candidates in names.items():
        found = next((c for c in candidates if has_column(columns, c)), None)
        if found is not None:
            out[f] = found
    return out


def cell(record: dict[str, Any], column: str) -> Any:
    """A record's value in ``column`` (a dotted name reads inside objects); None if absent."""
    if column in record:
        return record[column]
    value: Any = record
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def text_value(value: Any, trimmed: bool) -> str | None:
    """A cell as text: a string as written (``trimmed``: without spaces around it), a
    number as its digits, a list of aliases as its first; None when empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        raise TypeError("expected text, found true/false")
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        text = value.strip() if trimmed else value
        return text if text.strip() else None
    if isinstance(value, (list, tuple, dict)):
        return first_text(value)
    raise TypeError(f"expected text, found {type(value).__name__}")


def prompt_list(value: Any, from_text_cell: bool) -> list[str]:
    """A cell as a list of prompts. A CSV/TSV cell holds one prompt per line, or a JSON
    array of strings; elsewhere a string, a list of strings, a list of objects with a
    ``prompt``, or KnowEdit's ``{key: [{prompt, ...}]}``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        if from_text_cell and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise TypeError(f"the cell starts with `[` but is not a JSON array of strings ({exc.msg})") from None
            if not isinstance(value, list):
                raise TypeError("the cell is not a JSON array of strings")
            return prompt_list(value, False)
        lines = value.split("\n") if from_text_cell else [value]
        return [p.rstrip("\r") for p in lines if p.strip()]
    if isinstance(value, dict):
        if "prompt" in value:
            return prompt_list(value["prompt"], False)
        return [p for v in value.values() for p in prompt_list(v, False)]
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for item in value:
            if isinstance(item, str):
                if item.strip():
                    out.append(item)
            elif isinstance(item, dict):
                out.extend(prompt_list(item, False))
            else:
                raise TypeError(f"expected prompts (strings), found {type(item).__name__}")
        return out
    raise TypeError(f"expected a list of prompts, found {type(value).__name__}")


def fill_template(template: str, subject: str) -> str:
    """A layout's prompt template with the subject in it (as a relation template is filled)."""
    return template.replace("{}", subject, 1)
