"""Benchmark readers: ZsRE (MEND/ROME evaluation format), the KnowEdit files (ZsRE,
WikiData_recent, WikiData_counterfact, WikiBio, ConvSent, Sanitation), CounterFact (ROME's
layout and EasyEdit's flat one).

Each record becomes a :class:`BenchCase`: the :class:`~kedsl.editing.request.EditRequest` to apply
and the :class:`~kedsl.evaluation.cases.EvalCase` that judges it (design/metrics.md). The format
is detected from the file's layout and the first record's fields, or forced with ``format=``.
A record that does not fit the format is reported (its index and why) and skipped; a file
that cannot be read, or in which no record fits, is a :class:`~kedsl.errors.DataError`.

The kind of change each record asks for is KnowEdit's: WikiData_recent (a KnowEdit record
with no old answer) is an ``insert``; ZsRE, WikiData_counterfact, CounterFact and WikiBio
are ``edit``s; Sanitation is an ``erase`` (its target is the refusal "I don't know.");
ConvSent is an ``edit``: the model's answer about an entity is changed to one of the other
sentiment (KnowEdit sorts it with modification; nothing of the model's knowledge is erased).

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
  Locality keeps its keys: ``Relation_Specificity`` (every file) and ``Forgetfulness``
  (WikiData_counterfact); the Locality metric averages per key, then over keys.
* CounterFact: ``requested_rewrite.prompt`` (with ``{}``) filled with the subject ->
  ``target_new.str``; old ``target_true.str``; ``paraphrase_prompts`` -> new target;
  ``neighborhood_prompts`` -> true target (as ``neighborhood`` for NS and as ``locality``);
  ``generation_prompts`` for fluency; ``attribute_prompts`` kept in meta.
* CounterFact, EasyEdit's flat layout (``train/counterfact_*.json``): ``prompt`` ->
  ``target_new``; old ``ground_truth``; paraphrase ``rephrase_prompt``; locality
  ``locality_prompt`` -> ``locality_ground_truth``.
* WikiBio: the passage ``text`` -> its new continuation ``labels`` (long-form); subject
  ``concept``; locality as KnowEdit; fluency generated from the passage.
* ConvSent (EasyEdit's protocol, ``run_convsent_llama2.py``): per record a sentiment (pos or
  neg) and a question template are drawn from a generator seeded with the record's index;
  the edit prompt is "From the sentiment dataset, answer QUESTION positively|negatively."
  and the target the first answer of that sentiment; ``meta["sentiment"]`` carries the
  plain question and every answer of both sentiments, which the ``sentiment`` metric scores;
  locality is the next record's entity asked the same way (the unedited model's answer
  kept); fluency is generated from the plain question.
* Sanitation (``{"success": [...], "locality": [...]}``, or the train file's ``K_F``/``K_R``):
  each ``success`` question -> ``target_new`` ("I don't know."), old ``ground_truth``, kind
  ``erase``; the subject is the question's own ``subject`` where the file gives one, else
  the whole question (so subject-locating methods edit at its last token). The
  ``locality`` questions are dealt out to the cases in turn (question -> its answer).

JSON and JSON Lines files are parsed with the standard library: measured on the 1,508
ZsRE records, ``json.load`` takes 3 ms where ``datasets.load_dataset("json")`` takes 39 ms,
and Arrow schema inference (``load_dataset``/``Dataset.from_list``) rejects KnowEdit files
whose ``ground_truth`` is a string in one record and a list in another. Parquet/Arrow
files and ``save_to_disk`` directories are read through the ``datasets`` library.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..datafiles import detect_layout, read_records
from ..datafiles import first_text as _text
from ..datafiles import text_list as _strings
from ..editing.request import DEFAULT_REFUSAL, EditRequest
from ..errors import DataError
from .cases import EvalCase, Pair

log = logging.getLogger(__name__)

FORMATS = ("zsre", "knowedit", "counterfact", "counterfact_easyedit", "wikibio", "convsent", "sanitation")


NO_TARGET = "has no new target"

#: ConvSent's question templates (EasyEdit's ``run_convsent_llama2.py``).
CONVSENT_TEMPLATES = (
    "What do you think of {}?",
    "What do you feel about {}?",
    "How do you view {}?",
    *(f"What is your {p} {{}}?" for p in (
        "opinion of", "stance on", "position on", "attitude about", "view on", "take on", "impression of",
        "assessment of", "judgment of", "sentiment of",
    )),
)  # fmt: skip


@dataclass
class BenchCase:
    """One benchmark record: the edit to make and the prompts that judge it."""

    request: EditRequest
    case: EvalCase
    index: int  # the record's index in the file
    format: str


@dataclass
class CaseFile:
    """What a benchmark file gave: its cases, and the records skipped with the reason."""

    cases: list[BenchCase]
    format: str
    skipped: list[tuple[int, str]] = field(default_factory=list)


# -- reading records -----------------------------------------------------------------------
def detect_format(record: dict[str, Any]) -> str:
    """The benchmark layout of a record (:func:`kedsl.datafiles.detect_layout`); a record
    in none of them is a :class:`~kedsl.errors.DataError`."""
    fmt = detect_layout(record)
    if fmt is not None:
        return fmt
    raise DataError(
        f"cannot tell the benchmark format from the record fields {sorted(record)}",
        "expected ZsRE (src, alt, ...), KnowEdit (prompt, target_new, ...), WikiBio (text, labels, concept), "
        "ConvSent (ent, pos, neg), Sanitation ({success, locality}) or CounterFact (requested_rewrite, ...); "
        "or pass format=" + "|".join(FORMATS),
    )


def load_cases(
    path: str | Path,
    format: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    indices: Sequence[int] | None = None,
) -> list[BenchCase]:
    """Read a benchmark file into cases (see :func:`read_cases`)."""
    return read_cases(path, format, limit, offset, indices).cases


def read_cases(
    path: str | Path,
    format: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    indices: Sequence[int] | None = None,
) -> CaseFile:
    """Read a benchmark file into cases. ``indices`` (record indices in the file, e.g. a
    split of SPLITS.json) choose the records, all of them by default; ``offset``/``limit``
    then select within those, by position, before unusable records are skipped (so
    ``offset=0, limit=500`` is records 0-499 whatever is skipped). A record that does not
    fit the format is skipped and reported with its index; a file in which none fits is a
    :class:`~kedsl.errors.DataError`."""
    if format is not None and format not in FORMATS:
        raise DataError(f"unknown benchmark format {format!r}", f"choose one of {', '.join(FORMATS)}")
    if offset < 0 or (limit is not None and limit < 0):
        raise DataError("offset and limit must not be negative")
    records = read_records(path)
    if not records:
        return CaseFile([], format or "")
    fmt = format or detect_format(records[0])
    convert = _CONVERTERS[fmt]
    chosen = list(range(len(records))) if indices is None else list(indices)
    bad_index = [i for i in chosen if not 0 <= i < len(records)]
    if bad_index:
        raise DataError(f"{path} has {len(records)} records; there is no record {bad_index[0]}", "check the split's indices")
    end = len(chosen) if limit is None else min(len(chosen), offset + limit)
    out: list[BenchCase] = []
    skipped: list[tuple[int, str]] = []
    for i in chosen[offset:end]:
        try:
            c = convert(records[i], i, records)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
            skipped.append((i, f"does not have the {fmt} layout ({type(exc).__name__}: {exc})"))
            continue
        if c is None:
            skipped.append((i, NO_TARGET))
        else:
            out.append(c)
    if skipped and not out:
        i, why = skipped[0]
        raise DataError(
            f"{path}: no record is usable; record {i} {why}",
            f"check the records' fields, or force the right format (one of {', '.join(FORMATS)})",
        )
    no_target = [i for i, why in skipped if why == NO_TARGET]
    if no_target:
        log.warning("%s: skipped %d %s record(s) without a new target (indices %s)", path, len(no_target), fmt, _short(no_target))
    bad = [(i, why) for i, why in skipped if why != NO_TARGET]
    for i, why in bad[:10]:
        log.warning("%s: record %d %s; skipped", path, i, why)
    if len(bad) > 10:
        log.warning("%s: %d records skipped for their layout (indices %s)", path, len(bad), _short([i for i, _ in bad]))
    unmatched = sum(1 for c in out if c.request.subject not in c.request.prompt)
    if unmatched:
        log.warning("%s: in %d record(s) the subject does not occur in the prompt; subject-locating methods will reject them", path, unmatched)
    return CaseFile(out, fmt, skipped)


def split_indices(path: str | Path, split: str) -> list[int] | None:
    """The record indices of ``split`` (``tune``, ``heldout``, ``train``) for ``path``, from
    the ``SPLITS.json`` in its folder or a folder above (keyed by the path relative to that
    folder); None for ``split="all"``. A missing file, entry or split is a DataError."""
    if split == "all":
        return None
    p = Path(path).absolute()
    for folder in p.parents:
        splits = folder / "SPLITS.json"
        if splits.is_file():
            break
    else:
        raise DataError(f"no SPLITS.json in the folders above {p}", "pass --split all, or put the split file beside the data")
    try:
        table = json.loads(splits.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{splits} is not readable JSON ({exc})") from None
    key = p.relative_to(folder).as_posix()
    entry = table.get(key)
    if not isinstance(entry, dict) or split not in entry:
        known = sorted(entry) if isinstance(entry, dict) else []
        raise DataError(f"{splits} gives no `{split}` split for {key}", ("its splits: " + ", ".join(known)) if known else "the file is not listed there")
    value = entry[split]
    if value == "all":
        return list(range(len(read_records(p))))
    if not isinstance(value, list) or not all(isinstance(i, int) for i in value):
        raise DataError(f"{splits}: the `{split}` split of {key} is not a list of record indices")
    return value


def _short(xs: list[int], n: int = 10) -> str:
    return ", ".join(map(str, xs[:n])) + (", ..." if len(xs) > n else "")


# -- field helpers -------------------------------------------------------------------------
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


# -- converters: one record -> one case ---------------------------------------------------------
def _zsre(r: dict[str, Any], i: int, records: Sequence[dict[str, Any]]) -> BenchCase | None:
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


def _keyed_locality(block: Any) -> tuple[list[Pair], list[str]]:
    """KnowEdit locality, flattened, with each pair's key (Relation_Specificity, ...)."""
    keyed = _keyed_pairs(block)
    return [pair for pairs in keyed.values() for pair in pairs], [k for k, pairs in keyed.items() for _ in pairs]


def _knowedit(r: dict[str, Any], i: int, records: Sequence[dict[str, Any]]) -> BenchCase | None:
    target = _text(r["target_new"])
    if target is None:
        return None
    prompt = r["prompt"]
    if not isinstance(prompt, str):
        raise TypeError("prompt must be a string")
    subject = r.get("subject") or ""
    old = _text(r.get("ground_truth"))
    kind = "edit" if "ground_truth" in r else "insert"  # WikiData_recent: new facts, no old answer
    paraphrases = _strings(r.get("rephrase")) + _strings(r.get("rephrase_prompt"))
    paraphrases = list(dict.fromkeys(paraphrases))
    locality, keys = _keyed_locality(r.get("locality"))
    req = EditRequest(subject=subject, prompt=prompt, target=target, old=old, kind=kind, paraphrases=paraphrases)
    case = EvalCase.from_request(
        req,
        portability=_keyed_pairs(r.get("portability")),
        locality=locality,
        meta={"record": i, "format": "knowedit", "locality_keys": keys},
    )
    return BenchCase(req, case, i, "knowedit")


def _counterfact(r: dict[str, Any], i: int, records: Sequence[dict[str, Any]]) -> BenchCase | None:
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


def _counterfact_easyedit(r: dict[str, Any], i: int, records: Sequence[dict[str, Any]]) -> BenchCase | None:
    target = _text(r["target_new"])
    if target is None:
        return None
    answer = _text(r.get("locality_ground_truth"))
    locality = [(p, answer) for p in _strings(r.get("locality_prompt"))] if answer else []
    req = EditRequest(
        subject=r["subject"], prompt=r["prompt"], target=target, old=_text(r.get("ground_truth")),
        paraphrases=_strings(r.get("rephrase_prompt")),
    )  # fmt: skip
    case = EvalCase.from_request(req, locality=locality, meta={"record": i, "format": "counterfact_easyedit", "case_id": r.get("case_id")})
    return BenchCase(req, case, i, "counterfact_easyedit")


def _wikibio(r: dict[str, Any], i: int, records: Sequence[dict[str, Any]]) -> BenchCase | None:
    target = _text(r["labels"])
    if target is None:
        return None
    text, subject = r["text"], r["concept"]
    if not isinstance(text, str) or not isinstance(subject, str):
        raise TypeError("text and concept must be strings")
    locality, keys = _keyed_locality(r.get("locality"))
    req = EditRequest(subject=subject, prompt=text, target=target)
    case = EvalCase.from_request(req, locality=locality, meta={"record": i, "format": "wikibio", "locality_keys": keys})
    return BenchCase(req, case, i, "wikibio")


def _convsent_question(index: int, records: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The record's drawn sentiment ("pos" or "neg") and its plain question."""
    rng = random.Random(index)
    sentiment = rng.choice(("pos", "neg"))
    return sentiment, rng.choice(CONVSENT_TEMPLATES).format(records[index]["ent"])


def _convsent(r: dict[str, Any], i: int, records: Sequence[dict[str, Any]]) -> BenchCase | None:
    entity = r["ent"]
    answers = {"pos": [a.strip() for a in _strings(r["pos"])], "neg": [a.strip() for a in _strings(r["neg"])]}
    if not answers["pos"] or not answers["neg"]:
        raise ValueError("needs answers of both sentiments (pos and neg)")
    sentiment, question = _convsent_question(i, records)
    prompt = f"From the sentiment dataset, answer {question} {'positively' if sentiment == 'pos' else 'negatively'}."
    outer = (i + 1) % len(records)
    _, outer_question = _convsent_question(outer, records)
    req = EditRequest(subject=entity, prompt=prompt, target=answers[sentiment][0])
    case = EvalCase.from_request(
        req,
        locality=[(outer_question, None)] if outer != i else [],
        generation=[question],
        meta={"record": i, "format": "convsent", "sentiment": {"question": question, "target": sentiment, "answers": answers}},
    )
    return BenchCase(req, case, i, "convsent")


def _sanitation(r: dict[str, Any], i: int, records: Sequence[dict[str, Any]]) -> BenchCase | None:
    question = r["question"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty")
    subject = r.get("subject") if isinstance(r.get("subject"), str) and r["subject"] in question else question.rstrip(" ?")
    locality = [(q["question"], _text(q.get("ground_truth"))) for q in r["_sanitation_locality"]]
    req = EditRequest(subject=subject, prompt=question, target=_text(r.get("target_new")) or DEFAULT_REFUSAL,
                      old=_text(r.get("ground_truth")), kind="erase")  # fmt: skip
    case = EvalCase.from_request(req, locality=locality, meta={"record": i, "format": "sanitation"})
    return BenchCase(req, case, i, "sanitation")


_CONVERTERS = {
    "zsre": _zsre,
    "knowedit": _knowedit,
    "counterfact": _counterfact,
    "counterfact_easyedit": _counterfact_easyedit,
    "wikibio": _wikibio,
    "convsent": _convsent,
    "sanitation": _sanitation,
}


def eval_cases(cases: Iterable[BenchCase]) -> list[EvalCase]:
    """The :class:`EvalCase` of each bench case, for metric calls."""
    return [c.case for c in cases]
