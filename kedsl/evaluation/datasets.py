"""Benchmark readers: ZsRE (MEND/ROME evaluation format), KnowEdit JSON and CounterFact.

Each record becomes a :class:`BenchCase`: the :class:`~kedsl.editing.request.EditRequest` to apply
and the :class:`~kedsl.evaluation.cases.EvalCase` that judges it (design/metrics.md). The format
is detected from the first record's fields, or forced with ``format=``.

Field mapping (the prompts metrics see):

* ZsRE: edit ``src`` -> ``alt``; old ``answers[0]``; paraphrase ``rephrase``; locality
  ``loc`` -> ``loc_ans`` with the ``"nq question: "`` prefix kept, as EasyEdit (the
  KnowEdit tool) feeds it. Records with an empty ``alt`` are skipped with one warning
  giving their count; ``meta["record"]`` keeps the record index in the file.
* KnowEdit: ``prompt`` -> ``target_new``; old ``ground_truth``; paraphrase ``rephrase`` or
  ``rephrase_prompt``; ``portability`` and ``locality`` as ``{key: [{prompt,
  ground_truth}]}`` (locality flattened over keys, the key of each pair in
  ``meta["locality_keys"]``). A ``ground_truth`` may be a string or a (nested) list of
  aliases: the first alias is the answer.
* CounterFact: ``requested_rewrite.prompt`` (with ``{}``) filled with the subject ->
  ``target_new.str``; old ``target_true.str``; ``paraphrase_prompts`` -> new target;
  ``neighborhood_prompts`` -> true target (as ``neighborhood`` for NS and as ``locality``);
  ``generation_prompts`` for fluency; ``attribute_prompts`` kept in meta.

JSON and JSON Lines files are parsed with the standard library: measured on the 1,508
ZsRE records, ``json.load`` takes 3 ms where ``datasets.load_dataset("json")`` takes 39 ms,
and Arrow schema inference (``load_dataset``/``Dataset.from_list``) rejects KnowEdit files
whose ``ground_truth`` is a string in one record and a list in another. Parquet/Arrow
files and ``save_to_disk`` directories are read through the ``datasets`` library.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..editing.request import EditRequest
from ..errors import DataError
from .cases import EvalCase, Pair

log = logging.getLogger(__name__)

FORMATS = ("zsre", "knowedit", "counterfact")


@dataclass
class BenchCase:
    """One benchmark record: the edit to make and the prompts that judge it."""

    request: EditRequest
    case: EvalCase
    index: int  # the record's index in the file
    format: str


# -- reading records -----------------------------------------------------------------------
def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON array, JSON Lines file, Parquet/Arrow file or a
    ``datasets`` ``save_to_disk`` directory, as plain dicts."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"benchmark file {str(p)!r} does not exist", "check the path")
    if p.is_dir() or p.suffix in (".parquet", ".arrow"):
        return _read_with_datasets(p)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p} is not UTF-8 text: {exc}", "benchmark files are JSON, JSON Lines or Parquet") from None
    if p.suffix == ".jsonl":
        recs = _json_lines(p, text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if text.lstrip().startswith("{"):
                return _check_objects(p, _json_lines(p, text))  # JSON Lines under another suffix
            raise DataError(
                f"{p} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                "benchmark files are a JSON array of records, or JSON Lines",
            ) from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{p} holds a JSON {type(data).__name__}, not a list of records", "benchmark files are a JSON array of records")
        recs = data
    return _check_objects(p, recs)


def _json_lines(p: Path, text: str) -> list[Any]:
    recs = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{n} is not valid JSON: {exc.msg}", "a JSON Lines file holds one JSON object per line") from None
    return recs


def _check_objects(p: Path, recs: list[Any]) -> list[dict[str, Any]]:
    for i, r in enumerate(recs):
        if not isinstance(r, dict):
            raise DataError(f"{p}: record {i} is a {type(r).__name__}, not an object", "every record must be a JSON object")
    return recs


def _read_with_datasets(p: Path) -> list[dict[str, Any]]:
    import datasets

    try:
        if p.is_dir():
            ds = datasets.load_from_disk(str(p))
        else:
            kind = "parquet" if p.suffix == ".parquet" else "arrow"
            ds = datasets.load_dataset(kind, data_files=str(p), split="train")
    except Exception as exc:  # datasets raises many types; all mean "cannot read this"
        raise DataError(f"cannot read {p} with the datasets library: {exc}", "pass a JSON/JSONL file or a save_to_disk directory") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[next(iter(ds))]
    return [dict(r) for r in ds]


def detect_format(record: dict[str, Any]) -> str:
    if "requested_rewrite" in record:
        return "counterfact"
    if "src" in record and "alt" in record:
        return "zsre"
    if "prompt" in record and "target_new" in record:
        return "knowedit"
    raise DataError(
        f"cannot tell the benchmark format from the record fields {sorted(record)}",
        "expected ZsRE (src, alt, ...), KnowEdit (prompt, target_new, ...) or CounterFact "
        "(requested_rewrite, ...); or pass format=zsre|knowedit|counterfact",
    )


def load_cases(path: str | Path, format: str | None = None, limit: int | None = None, offset: int = 0) -> list[BenchCase]:
    """Read a benchmark file into cases. ``offset``/``limit`` select records by their index
    in the file (before skipping unusable ones), so ``offset=0, limit=500`` is records
    0-499 whatever is skipped."""
    if format is not None and format not in FORMATS:
        raise DataError(f"unknown benchmark format {format!r}", f"choose one of {', '.join(FORMATS)}")
    if offset < 0 or (limit is not None and limit < 0):
        raise DataError("offset and limit must not be negative")
    records = read_records(path)
    if not records:
        return []
    fmt = format or detect_format(records[0])
    convert = {"zsre": _zsre, "knowedit": _knowedit, "counterfact": _counterfact}[fmt]
    end = len(records) if limit is None else min(len(records), offset + limit)
    out: list[BenchCase] = []
    skipped: list[int] = []
    for i in range(offset, end):
        try:
            c = convert(records[i], i)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise DataError(
                f"{path}: record {i} does not have the {fmt} layout ({type(exc).__name__}: {exc})",
                f"check the record's fields, or force the right format (one of {', '.join(FORMATS)})",
            ) from None
        if c is None:
            skipped.append(i)
        else:
            out.append(c)
    if skipped:
        log.warning("%s: skipped %d %s record(s) without a new target (indices %s)", path, len(skipped), fmt, _short(skipped))
    unmatched = sum(1 for c in out if c.request.subject not in c.request.prompt)
    if unmatched:
        log.warning("%s: in %d record(s) the subject does not occur in the prompt; subject-locating methods will reject them", path, unmatched)
    return out


def _short(xs: list[int], n: int = 10) -> str:
    return ", ".join(map(str, xs[:n])) + (", ..." if len(xs) > n else "")


# -- field helpers -------------------------------------------------------------------------
def _text(x: Any) -> str | None:
    """A string, or the first alias of a (nested) list of strings; None if empty."""
    if x is None:
        return None
    if isinstance(x, str):
        return x.strip() or None
    if isinstance(x, dict) and "str" in x:
        return _text(x["str"])
    if isinstance(x, (list, tuple)):
        for y in x:
            t = _text(y)
            if t is not None:
                return t
        return None
    raise TypeError(f"expected a string or a list of strings, got {type(x).__name__}")


def _strings(x: Any) -> list[str]:
    """A string or a list of strings, as a list without empties."""
    if x is None:
        return []
    if isinstance(x, str):
        return [x] if x.strip() else []
    if isinstance(x, (list, tuple)):
        return [s for s in x if isinstance(s, str) and s.strip()]
    raise TypeError(f"expected a string or a list of strings, got {type(x).__name__}")


def _keyed_pairs(block: Any) -> dict[str, list[Pair]]:
    """KnowEdit ``{key: [{prompt, ground_truth}]}`` (a single dict per key is accepted)."""
    if not block:
        return {}
    if not isinstance(block, dict):
        raise TypeError(f"expected {{key: [{{prompt, ground_truth}}]}}, got {type(block).__name__}")
    out: dict[str, list[Pair]] = {}
    for key, items in block.items():
        if isinstance(items, dict):
            items = [items]
        pairs: list[Pair] = []
        for it in items or []:
            prompts = _strings(it["prompt"])
            answer = _text(it.get("ground_truth"))
            if answer is None:
                continue  # a prompt without an answer cannot be scored
            pairs.extend((p, answer) for p in prompts)
        if pairs:
            out[str(key)] = pairs
    return out


# -- converters ----------------------------------------------------------------------------
def _zsre(r: dict[str, Any], i: int) -> BenchCase | None:
    target = _text(r["alt"])
    if target is None:
        return None
    prompt, subject = r["src"], r["subject"]
    old = _text(r.get("answers"))
    paraphrases = _strings(r.get("rephrase"))
    locality = [(r["loc"], _text(r["loc_ans"]))] if r.get("loc") and _text(r.get("loc_ans")) else []
    req = EditRequest(subject=subject, prompt=prompt, target=target, old=old, paraphrases=paraphrases)
    case = EvalCase.from_request(req, locality=locality, meta={"record": i, "format": "zsre"})
    return BenchCase(req, case, i, "zsre")


def _knowedit(r: dict[str, Any], i: int) -> BenchCase | None:
    target = _text(r["target_new"])
    if target is None:
        return None
    prompt = r["prompt"]
    if not isinstance(prompt, str):
        raise TypeError("prompt must be a string")
    subject = r.get("subject") or ""
    old = _text(r.get("ground_truth"))
    paraphrases = _strings(r.get("rephrase")) + _strings(r.get("rephrase_prompt"))
    paraphrases = list(dict.fromkeys(paraphrases))
    locality_keyed = _keyed_pairs(r.get("locality"))
    locality = [pair for pairs in locality_keyed.values() for pair in pairs]
    keys = [k for k, pairs in locality_keyed.items() for _ in pairs]
    req = EditRequest(subject=subject, prompt=prompt, target=target, old=old, paraphrases=paraphrases)
    case = EvalCase.from_request(
        req,
        portability=_keyed_pairs(r.get("portability")),
        locality=locality,
        meta={"record": i, "format": "knowedit", "locality_keys": keys},
    )
    return BenchCase(req, case, i, "knowedit")


def _counterfact(r: dict[str, Any], i: int) -> BenchCase | None:
    rw = r["requested_rewrite"]
    subject = rw["subject"]
    template = rw["prompt"]
    if "{}" not in template:
        raise KeyError("requested_rewrite.prompt has no {} for the subject")
    prompt = template.replace("{}", subject, 1)
    target = _text(rw["target_new"])
    if target is None:
        return None
    old = _text(rw.get("target_true"))
    paraphrases = _strings(r.get("paraphrase_prompts"))
    neighborhood = [(p, old) for p in _strings(r.get("neighborhood_prompts"))] if old else []
    req = EditRequest(
        subject=subject, prompt=prompt, target=target, old=old, relation=rw.get("relation_id"), paraphrases=paraphrases
    )
    case = EvalCase.from_request(
        req,
        locality=list(neighborhood),
        neighborhood=neighborhood,
        generation=_strings(r.get("generation_prompts")),
        meta={
            "record": i,
            "format": "counterfact",
            "case_id": r.get("case_id"),
            "relation": rw.get("relation_id"),
            "attribute_prompts": _strings(r.get("attribute_prompts")),
        },
    )
    return BenchCase(req, case, i, "counterfact")


def eval_cases(cases: Iterable[BenchCase]) -> list[EvalCase]:
    """The :class:`EvalCase` of each bench case, for metric calls."""
    return [c.case for c in cases]
