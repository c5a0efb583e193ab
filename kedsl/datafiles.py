"""Data files: the records of the JSON, JSON Lines, Parquet and Arrow files ``kedsl bench``
and ``kedsl train`` read (:func:`read_records`), and the rows of a file an ``edits from``
statement names (:func:`read_table`: CSV and TSV as well, every bad row reported rather
than the first). Torch-free; ``datasets`` is imported only for Parquet and Arrow.

Rows are numbered from 1 in the order the file holds its records; a CSV/TSV header and
blank lines are not rows. In a file without blank lines (and, for CSV, without line
breaks inside cells), row N is line N + 1 of a CSV/TSV file and line N of a JSON Lines
file.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError

#: The file formats :func:`read_table` reads, and the file name suffixes that imply them.
TABLE_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet", "arrow")
SUFFIX_FORMATS = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
    ".parquet": "parquet", ".arrow": "arrow",
}  # fmt: skip
_DELIMITERS = {"csv": ",", "tsv": "\t"}
# A byte that is not UTF-8, as ``surrogateescape`` decodes it.
_UNDECODED = re.compile("[\udc80-\udcff]")
_UTF8_HINT = "save the file as UTF-8 (a spreadsheet calls it 'CSV UTF-8')"


class DataFileError(DataError):
    """A data file that cannot be read as a whole (missing, empty, not the format its
    name says); ``code`` names the problem, as a diagnostic's code."""

    def __init__(self, message: str, hint: str | None = None, code: str = "bad-data-file"):
        super().__init__(message, hint)
        self.code = code


@dataclass
class RowProblem:
    """A row that could not be read (not UTF-8, not JSON, the wrong number of cells)."""

    row: int
    message: str
    code: str
    column: str | None = None
    hint: str | None = None


@dataclass
class Table:
    """What a data file holds: ``records[i]`` is row ``i + 1`` (None where the row could
    not be read: see ``problems``); ``columns`` are the CSV header, or every key the
    records have in the order first seen; ``layout`` is the benchmark layout of JSON
    records (:func:`detect_layout`), None for plain columns."""

    format: str
    columns: list[str]
    records: list[dict[str, Any] | None]
    problems: list[RowProblem] = field(default_factory=list)
    layout: str | None = None


def table_format(name: str) -> str | None:
    """The format a file name's suffix implies (None if it implies none)."""
    return SUFFIX_FORMATS.get(Path(name).suffix.lower())


def read_table(content: bytes, format: str, name: str, file: Path | None = None) -> Table:
    """The rows of a data file's ``content`` in ``format`` (one of :data:`TABLE_FORMATS`).
    ``name`` is how messages call the file; ``file`` is where Parquet/Arrow content is
    read from (``datasets`` reads files). A file that cannot be read as a whole raises
    :class:`DataFileError`; a row that cannot be read is a :class:`RowProblem`."""
    if not content.strip():
        raise DataFileError(f"{name} is empty", "a data file holds a header and one row per fact", "empty-data-file")
    if format in ("parquet", "arrow"):
        return _binary_table(content, format, name, file)
    text, undecodable = _decode(content, name, line_by_line=format != "json")
    if format in _DELIMITERS:
        table = _csv_table(text, _DELIMITERS[format], name, format, undecodable)
    elif format == "jsonl":
        table = _jsonl_table(text, undecodable)
    elif format == "json":
        table = _json_table(text, name)
    else:
        raise ValueError(f"unknown table format {format!r}")
    if not table.records:
        raise DataFileError(f"{name} has no rows" + (" below its header" if format in _DELIMITERS else ""),
                            "add one row per fact", "no-rows")  # fmt: skip
    return table


def _decode(content: bytes, name: str, line_by_line: bool) -> tuple[str, bool]:
    """The text of ``content`` (a UTF-8 byte order mark dropped) and whether some of it
    was not UTF-8. Line-based formats keep undecodable bytes as surrogates, so that each
    row holding one is reported; in a JSON document it is an error at the file."""
    try:
        return content.decode("utf-8-sig"), False
    except UnicodeDecodeError as exc:
        if line_by_line:
            return content.decode("utf-8-sig", errors="surrogateescape"), True
        line = content.count(b"\n", 0, exc.start) + 1
        raise DataFileError(
            f"{name} is not UTF-8 text (byte 0x{content[exc.start]:02x} on line {line})", _UTF8_HINT, "not-utf8"
        ) from None


def _undecodable(row: int, cells: dict[str, Any]) -> RowProblem | None:
    for column, value in cells.items():
        m = _UNDECODED.search(value) if isinstance(value, str) else None
        if m:
            byte = ord(m.group()) - 0xDC00
            where = f" in column `{column}`" if column else ""
            return RowProblem(row, f"not UTF-8 text (byte 0x{byte:02x}{where})", "not-utf8", column or None, _UTF8_HINT)
    return None


def _csv_table(text: str, delimiter: str, name: str, format: str, undecodable: bool) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next((r for r in reader if r), None)
        if header is None:
            raise DataFileError(f"{name} is empty", "a data file holds a header and one row per fact", "empty-data-file")
        if undecodable and _undecodable(0, dict(zip(header, header))):
            raise DataFileError(f"the header of {name} is not UTF-8 text", _UTF8_HINT, "not-utf8")
        seen: set[str] = set()
        for column in header:
            if column in seen:
                raise DataFileError(f"column `{column}` appears twice in the header of {name}",
                                    "give every column its own name", "duplicate-column")  # fmt: skip
            seen.add(column)
        width = len(header)
        records: list[dict[str, Any] | None] = []
        problems: list[RowProblem] = []
        for cells in reader:
            if not cells:
                continue  # a blank line is not a row
            row = len(records) + 1
            if len(cells) != width:
                records.append(None)
                problems.append(RowProblem(
                    row, f"the row has {len(cells)} cell(s), the header has {width}", "bad-row", None,
                    "every row has one cell per column (a cell holding the delimiter is written in double quotes)",
                ))  # fmt: skip
                continue
            record = dict(zip(header, cells))
            bad = _undecodable(row, record) if undecodable else None
            if bad is not None:
                records.append(None)
                problems.append(bad)
                continue
            records.append(record)
    except csv.Error as exc:
        raise DataFileError(f"{name} is not valid {format.upper()} (line {reader.line_num}: {exc})",
                            "quote cells that hold the delimiter, quotes or line breaks", "bad-data-file") from None  # fmt: skip
    return Table(format, list(header), records, problems)


def json_lines(text: str) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    """The values of a JSON Lines text as ``(line, value)`` pairs, and ``(line,
    message)`` for each non-blank line that is not JSON (lines count from 1)."""
    values: list[tuple[int, Any]] = []
    errors: list[tuple[int, str]] = []
    # Split on newlines only: a JSON string may hold U+2028 and the like as is.
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                values.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                errors.append((n, exc.msg))
    return values, errors


def _jsonl_table(text: str, undecodable: bool) -> Table:
    lines = text.split("\n")
    records: list[dict[str, Any] | None] = []
    problems: list[RowProblem] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = len(records) + 1
        bad = _undecodable(row, {"": line}) if undecodable else None
        if bad is not None:
            records.append(None)
            problems.append(bad)
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            records.append(None)
            problems.append(RowProblem(row, f"line {n} is not valid JSON: {exc.msg} (column {exc.colno})", "bad-json", None,
                                       "a JSON Lines file holds one JSON object per line"))  # fmt: skip
            continue
        records.append(_object_row(row, value, problems))
    return _records_table("jsonl", records, problems)


def _json_table(text: str, name: str) -> Table:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{name} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                            "a JSON data file is an array of objects, one per fact", "bad-data-file") from None  # fmt: skip
    try:
        values = _document_records(Path(name), data)
    except DataError as exc:
        raise DataFileError(exc.message, exc.hint, "bad-data-file") from None
    problems: list[RowProblem] = []
    return _records_table("json", [_object_row(i, value, problems) for i, value in enumerate(values, 1)], problems)


def _object_row(row: int, value: Any, problems: list[RowProblem]) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    problems.append(RowProblem(row, f"the row is a JSON {type(value).__name__}, not an object", "bad-row", None,
                               "every row is a JSON object with the fact's fields"))  # fmt: skip
    return None


def _records_table(format: str, records: list[dict[str, Any] | None], problems: list[RowProblem]) -> Table:
    columns: dict[str, None] = {}
    for r in records:
        if r is not None:
            columns.update(dict.fromkeys(r))
    first = next((r for r in records if r is not None), None)
    return Table(format, list(columns), records, problems, detect_layout(first) if first is not None else None)


def _binary_table(content: bytes, format: str, name: str, file: Path | None) -> Table:
    # Check the file's signature first: a text file under a .parquet name gets a plain
    # answer, without the datasets library's.
    if format == "parquet" and not (content[:4] == b"PAR1" and content[-4:] == b"PAR1"):
        raise DataFileError(f"{name} is not a Parquet file (it does not begin and end with PAR1)",
                            _looks_like(content), "bad-data-file")  # fmt: skip
    if format == "arrow" and not (content[:6] == b"ARROW1" or content[:4] == b"\xff\xff\xff\xff"):
        raise DataFileError(f"{name} is not an Arrow file (no Arrow file or stream header)", _looks_like(content), "bad-data-file")
    if file is None:
        raise ValueError("Parquet and Arrow tables are read from a file")
    try:
        records = read_with_datasets(file, format, quiet=True)
    except DataError as exc:
        raise DataFileError(exc.message, exc.hint, "bad-data-file") from None
    if not records:
        raise DataFileError(f"{name} has no rows", "add one row per fact", "no-rows")
    return _records_table(format, list(records), [])


def _looks_like(content: bytes) -> str:
    head = content[:512]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "write it with pandas' to_parquet or datasets' to_parquet, or name the file after its format"
    return "it looks like text: name it .csv, .tsv, .jsonl or .json after what it holds"


# -- the records of benchmark files ----------------------------------------------------------
def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON array, JSON Lines file, Parquet/Arrow file or a
    ``datasets`` ``save_to_disk`` directory, as plain dicts."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"benchmark file {str(p)!r} does not exist", "check the path")
    if p.is_dir() or p.suffix in (".parquet", ".arrow"):
        return read_with_datasets(p)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p} is not UTF-8 text: {exc}", "benchmark files are JSON, JSON Lines or Parquet") from None
    if p.suffix == ".jsonl":
        recs = _json_lines_or_raise(p, text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if text.lstrip().startswith("{"):
                return _check_objects(p, _json_lines_or_raise(p, text))  # JSON Lines under another suffix
            raise DataError(
                f"{p} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                "benchmark files are a JSON array of records, or JSON Lines",
            ) from None
        recs = _document_records(p, data)
    return _check_objects(p, recs)


def _document_records(p: Path, data: Any) -> list[Any]:
    """The records of a parsed JSON document: an array, ``{"data": [...]}``, or
    Sanitation's dict of two lists (one record per question to erase)."""
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, dict) and _sanitation_parts(data) is not None:
        return _sanitation_records(p, data)
    if not isinstance(data, list):
        raise DataError(f"{p} holds a JSON {type(data).__name__}, not a list of records", "a JSON data file is an array of records, one per fact")
    return data


def _sanitation_parts(data: dict[str, Any]) -> tuple[list[Any], list[Any]] | None:
    """Sanitation's two lists: the questions to erase and the locality questions."""
    for erase, keep in (("success", "locality"), ("K_F", "K_R")):
        if isinstance(data.get(erase), list) and isinstance(data.get(keep), list):
            return data[erase], data[keep]
    return None


def _sanitation_records(p: Path, data: dict[str, Any]) -> list[dict[str, Any]]:
    """Sanitation's dict as one record per question to erase, each carrying the locality
    questions dealt to it in turn (question i gets locality questions i, i + n, i + 2n, ...)."""
    erase, keep = _sanitation_parts(data) or ([], [])
    for what, items in (("question to erase", erase), ("locality question", keep)):
        for i, r in enumerate(items):
            if not isinstance(r, dict):
                raise DataError(f"{p}: {what} {i} is a {type(r).__name__}, not an object", "every record must be a JSON object")
    n = len(erase)
    return [{**r, "_sanitation_locality": [keep[j] for j in range(i, len(keep), n)]} for i, r in enumerate(erase)]


def _json_lines_or_raise(p: Path, text: str) -> list[Any]:
    values, errors = json_lines(text)
    if errors:
        n, msg = errors[0]
        raise DataError(f"{p}:{n} is not valid JSON: {msg}", "a JSON Lines file holds one JSON object per line")
    return [v for _, v in values]


def _check_objects(p: Path, recs: list[Any]) -> list[dict[str, Any]]:
    for i, r in enumerate(recs):
        if not isinstance(r, dict):
            raise DataError(f"{p}: record {i} is a {type(r).__name__}, not an object", "every record must be a JSON object")
    return recs


def read_with_datasets(p: Path, kind: str | None = None, quiet: bool = False) -> list[dict[str, Any]]:
    """The rows of a Parquet or Arrow file (``kind``, else from the suffix) or of a
    ``save_to_disk`` directory, read with the ``datasets`` library (imported here).
    ``quiet``: without the library's progress bars (``kedsl check`` prints diagnostics only)."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        if p.is_dir():
            ds = datasets.load_from_disk(str(p))
        else:
            kind = kind or ("parquet" if p.suffix == ".parquet" else "arrow")
            ds = datasets.load_dataset(kind, data_files=str(p), split="train")
    except Exception as exc:  # datasets raises many types; all mean "cannot read this"
        raise DataError(f"cannot read {p} with the datasets library: {exc}", "pass a JSON/JSONL file or a save_to_disk directory") from None
    finally:
        if quiet and bars:
            datasets.enable_progress_bars()
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[next(iter(ds))]
    return [dict(r) for r in ds]


def detect_layout(record: dict[str, Any]) -> str | None:
    """The benchmark layout a record has (a name of ``kedsl.evaluation.datasets.FORMATS``),
    from its fields; None when it has none of them."""
    if "_sanitation_locality" in record:
        return "sanitation"
    if "requested_rewrite" in record:
        return "counterfact"
    if "src" in record and "alt" in record:
        return "zsre"
    if {"text", "labels", "concept"} <= record.keys():
        return "wikibio"
    if {"ent", "pos", "neg"} <= record.keys():
        return "convsent"
    if "prompt" in record and "target_new" in record:
        return "counterfact_easyedit" if "locality_prompt" in record else "knowedit"
    return None


# -- field values ------------------------------------------------------------------------------
def first_text(x: Any) -> str | None:
    """A string (spaces around it removed), or the first alias of a (nested) list of
    strings; None if empty."""
    if x is None:
        return None
    if isinstance(x, str):
        return x.strip() or None
    if isinstance(x, dict) and "str" in x:
        return first_text(x["str"])
    if isinstance(x, (list, tuple)):
        for y in x:
            t = first_text(y)
            if t is not None:
                return t
        return None
    raise TypeError(f"expected a string or a list of strings, got {type(x).__name__}")


def text_list(x: Any) -> list[str]:
    """A string or a list of strings, as a list without empties."""
    if x is None:
        return []
    if isinstance(x, str):
        return [x] if x.strip() else []
    if isinstance(x, (list, tuple)):
        return [s for s in x if isinstance(s, str) and s.strip()]
    raise TypeError(f"expected a string or a list of strings, got {type(x).__name__}")
