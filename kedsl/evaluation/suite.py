"""Benchmark suites: every dataset of a study with every method, one cell at a time.

``kedsl bench --suite knowedit --methods rome,ft_m --limit 25`` runs the KnowEdit study
(Zhang et al., 2024): its six datasets, each on the records of one split (the held-out
records of SPLITS.json by default), each method in single mode (every edit applied to the
unedited model, measured, undone). Each (dataset, method) cell is written as JSON when it
is done, under ``OUT/<dataset>/<method>.json``, so a killed run started again with the
same command skips the finished cells. After the cells: ``OUT/<dataset>.json`` (every
method's aggregate on that dataset) and ``OUT/knowedit_table.md``, laid out like the
paper's table (rows: dataset x metric, columns: methods) with the paper's Llama-2-7b-chat
numbers beside ours where the paper has the method.

Across ranks (``torchrun``, ``--workers``), every rank runs every cell with its share of
the edits (:func:`~kedsl.evaluation.runner.run_bench`); rank 0 decides which cells are
finished and alone writes the files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import DataError, UsageError, did_you_mean
from ..files import private_temp
from ..records import canonical_json
from ..registry import Registry
from ..registry.presets import params_for
from .datasets import read_cases, split_indices
from .runner import BenchSettings, check_settings, data_sha256, run_bench
from .table import LABELS

if TYPE_CHECKING:
    from ..distributed import Ranks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteDataset:
    """One dataset of a suite: its name in the study, where its records are (tried in
    order, relative to the data folder), the study's task and the table's rows."""

    name: str
    files: tuple[str, ...]
    task: str
    rows: tuple[str, ...]  # metric names, in the table's order


#: KnowEdit's six datasets. WikiData_recent and WikiData_counterfact use the train files
#: where the test files cannot be had (their held-out records, as SPLITS.json says).
KNOWEDIT = (
    SuiteDataset("WikiData_recent", ("knowedit/recent_train.json", "wiki_recent/recent_test.json"), "insertion",
                 ("efficacy", "efficacy_gen", "portability", "locality", "fluency")),
    SuiteDataset("ZsRE", ("knowedit/ZsRE-test-all.json", "ZsRE/ZsRE-test-all.json"), "modification",
                 ("efficacy", "efficacy_gen", "portability", "locality", "fluency")),
    SuiteDataset("WikiBio", ("knowedit/wikibio-test-all.json", "WikiBio/wikibio-test-all.json"), "modification",
                 ("efficacy", "longform_f1", "locality", "fluency")),
    SuiteDataset("WikiData_counterfact", ("knowedit/train_cf.json", "wiki_counterfact/test_cf.json"), "modification",
                 ("efficacy", "efficacy_gen", "portability", "locality", "fluency")),
    SuiteDataset("ConvSent", ("knowedit/convsent_blender_test.json", "convsent/blender_test.json"), "modification",
                 ("sentiment", "locality", "fluency")),
    SuiteDataset("Sanitation", ("knowedit/trivia_qa_test.json", "Sanitation/trivia_qa_test.json"), "erasure",
                 ("efficacy", "efficacy_gen", "erased", "locality", "fluency")),
)  # fmt: skip
SUITES = {"knowedit": KNOWEDIT}

#: The paper's names for the rows (Edit Succ. is ConvSent's sentiment success there).
ROW_LABELS = {"efficacy": "Edit Succ.", "sentiment": "Edit Succ. (sentiment)", "efficacy_gen": "Edit Succ. (generation)"}

#: The table's column order (others follow, by name).
COLUMN_ORDER = ("ft_l", "ft_m", "rome", "memit", "alphaedit", "lora", "adalora", "ike", "grace", "mend", "serac")

#: Our methods and the paper's column for the same method (ICE is its in-context editing).
PAPER_METHODS = {"rome": "ROME", "memit": "MEMIT", "ft_l": "FT-L", "ft_m": "FT-M", "adalora": "AdaLoRA", "ike": "ICE",
                 "mend": "MEND", "serac": "SERAC"}  # fmt: skip

#: KnowEdit's table on Llama-2-7b-chat (EasyEdit's examples/KnowEdit.md, "Performence"),
#: row -> column -> value; accuracies in %, fluency x100.
PAPER = {
    ("WikiData_recent", "efficacy"): dict(SERAC=98.68, ICE=60.74, AdaLoRA=100.00, MEND=95.75, ROME=97.18, MEMIT=97.05, **{"FT-L": 55.75, "FT-M": 100.00}),
    ("WikiData_recent", "portability"): dict(SERAC=63.52, ICE=36.93, AdaLoRA=64.69, MEND=55.88, ROME=55.25, MEMIT=56.37, **{"FT-L": 40.86, "FT-M": 65.44}),
    ("WikiData_recent", "locality"): dict(SERAC=100.00, ICE=33.34, AdaLoRA=56.42, MEND=94.76, ROME=54.77, MEMIT=52.15, **{"FT-L": 43.70, "FT-M": 64.33}),
    ("WikiData_recent", "fluency"): dict(SERAC=553.19, ICE=531.01, AdaLoRA=579.57, MEND=557.11, ROME=579.66, MEMIT=573.89, **{"FT-L": 529.24, "FT-M": 574.32}),
    ("ZsRE", "efficacy"): dict(SERAC=99.67, ICE=66.01, AdaLoRA=100.00, MEND=96.74, ROME=96.77, MEMIT=95.37, **{"FT-L": 53.93, "FT-M": 99.98}),
    ("ZsRE", "portability"): dict(SERAC=56.48, ICE=63.94, AdaLoRA=58.03, MEND=60.41, ROME=52.63, MEMIT=52.67, **{"FT-L": 45.64, "FT-M": 60.31}),
    ("ZsRE", "locality"): dict(SERAC=30.23, ICE=23.14, AdaLoRA=75.76, MEND=92.79, ROME=53.67, MEMIT=48.32, **{"FT-L": 73.42, "FT-M": 89.78}),
    ("ZsRE", "fluency"): dict(SERAC=410.89, ICE=541.14, AdaLoRA=563.56, MEND=524.33, ROME=573.75, MEMIT=563.31, **{"FT-L": 493.01, "FT-M": 552.26}),
    ("WikiBio", "efficacy"): dict(SERAC=99.69, ICE=95.53, AdaLoRA=100.00, MEND=93.66, ROME=96.08, MEMIT=94.40, **{"FT-L": 66.33, "FT-M": 100.00}),
    ("WikiBio", "locality"): dict(SERAC=69.79, ICE=47.90, AdaLoRA=81.28, MEND=69.51, ROME=62.74, MEMIT=61.51, **{"FT-L": 79.86, "FT-M": 93.38}),
    ("WikiBio", "fluency"): dict(SERAC=606.95, ICE=632.92, AdaLoRA=618.45, MEND=609.39, ROME=617.69, MEMIT=616.65, **{"FT-L": 606.95, "FT-M": 612.69}),
    ("WikiData_counterfact", "efficacy"): dict(SERAC=99.99, ICE=69.83, AdaLoRA=100.00, MEND=80.03, ROME=98.57, MEMIT=98.05, **{"FT-L": 45.15, "FT-M": 100.00}),
    ("WikiData_counterfact", "portability"): dict(SERAC=76.07, ICE=45.32, AdaLoRA=69.89, MEND=52.01, ROME=55.92, MEMIT=58.56, **{"FT-L": 33.60, "FT-M": 74.36}),
    ("WikiData_counterfact", "locality"): dict(SERAC=98.96, ICE=32.38, AdaLoRA=70.31, MEND=94.38, ROME=51.97, MEMIT=46.62, **{"FT-L": 50.48, "FT-M": 76.76}),
    ("WikiData_counterfact", "fluency"): dict(SERAC=549.91, ICE=547.22, AdaLoRA=580.29, MEND=555.72, ROME=584.04, MEMIT=575.96, **{"FT-L": 528.26, "FT-M": 575.62}),
    ("ConvSent", "sentiment"): dict(SERAC=62.75, ICE=52.78, AdaLoRA=44.89, MEND=50.76, ROME=45.79, MEMIT=44.75, **{"FT-L": 49.50, "FT-M": 46.10}),
    ("ConvSent", "locality"): dict(SERAC=0.26, ICE=49.73, AdaLoRA=0.18, MEND=3.42, ROME=0.00, MEMIT=0.00, **{"FT-L": 0.00, "FT-M": 0.00}),
    ("ConvSent", "fluency"): dict(SERAC=458.21, ICE=621.45, AdaLoRA=606.42, MEND=379.43, ROME=606.32, MEMIT=602.62, **{"FT-L": 607.86, "FT-M": 592.52}),
    ("Sanitation", "efficacy"): dict(SERAC=0.00, ICE=72.50, AdaLoRA=2.50, MEND=0.00, ROME=85.00, MEMIT=48.75, **{"FT-L": 0.00, "FT-M": 75.00}),
    ("Sanitation", "locality"): dict(SERAC=100.00, ICE=56.58, AdaLoRA=65.50, MEND=5.29, ROME=50.31, MEMIT=67.47, **{"FT-L": 14.78, "FT-M": 47.07}),
    ("Sanitation", "fluency"): dict(SERAC=416.29, ICE=794.15, AdaLoRA=330.44, MEND=407.18, ROME=465.12, MEMIT=466.10, **{"FT-L": 439.10, "FT-M": 416.29}),
}  # fmt: skip

#: progress(message)
Say = Callable[[str], None]


@dataclass
class Cell:
    """One (dataset, method) cell: where its JSON goes and what it must have been run with."""

    dataset: SuiteDataset
    method: str
    path: Path
    key: str  # a digest of the settings given (data, split, limit, model, seed, parameters)
    params: dict[str, Any]  # the method's parameters as they resolve now (defaults and presets included)


def resolve_files(suite: Sequence[SuiteDataset], data_dir: Path) -> dict[str, Path]:
    """Each dataset's file under ``data_dir`` (the first of its candidates that exists)."""
    out = {}
    for d in suite:
        found = next((data_dir / f for f in d.files if (data_dir / f).is_file()), None)
        if found is None:
            raise DataError(f"no {d.name} file under {data_dir} (looked for {', '.join(d.files)})",
                            "pass the folder holding the KnowEdit files with --data-dir")  # fmt: skip
        out[d.name] = found
    return out


def run_suite(
    model: Any,
    registry: Registry,
    suite_name: str,
    methods: Sequence[str],
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    limit: int | None = None,
    split: str = "heldout",
    params: dict[str, dict[str, Any]] | None = None,
    datasets: Sequence[str] | None = None,
    seed: int = 0,
    say: Say | None = None,
    ranks: "Ranks | None" = None,
) -> dict[str, Any]:
    """Run every (dataset, method) cell not finished yet, then write the per-dataset JSON
    and the Markdown table; returns ``{dataset: {method: aggregate}}``. With ``ranks``,
    every rank calls this alike; rank 0 reads and writes the files."""
    say = say or (lambda msg: None)
    suite = check_suite(registry, suite_name, methods, datasets)
    data_dir, out = Path(data_dir), Path(out_dir)
    files = resolve_files(suite, data_dir)
    params = params or {}
    fingerprint = model.fingerprint()
    cells: list[tuple[SuiteDataset, list[Cell]]] = []
    indices: dict[str, list[int] | None] = {}
    for d in suite:
        indices[d.name] = split_indices(files[d.name], split)
        base = {"file": str(files[d.name].relative_to(data_dir)), "sha256": data_sha256(files[d.name]), "split": split,
                "limit": limit, "model": fingerprint, "seed": seed}  # fmt: skip
        row = []
        for m in methods:
            key = hashlib.sha256(canonical_json({**base, "method": m, "params": params.get(m, {})}).encode()).hexdigest()
            spec = registry.method(m)
            resolved = params_for(spec, params.get(m, {}), model).params
            row.append(Cell(d, m, out / d.name / f"{m}.json", key, resolved))
        cells.append((d, row))
    total = sum(len(row) for _, row in cells)
    done = 0
    results: dict[str, dict[str, Any]] = {}
    for d, row in cells:
        cases = None
        unedited: dict[Any, Any] = {}  # baselines on the unedited model, shared by the dataset's cells
        for cell in row:
            done += 1
            label = f"[cell {done}/{total}] {d.name} x {cell.method}"
            finished = _finished(cell) if ranks is None or ranks.is_main else None
            if ranks is not None:  # rank 0's files decide, so every rank runs the same cells
                finished = ranks.broadcast_object(finished)
            if finished is not None:
                say(f"{label}: done earlier, kept")
                results.setdefault(d.name, {})[cell.method] = finished
                continue
            if cases is None:
                loaded = read_cases(files[d.name], indices=indices[d.name], limit=limit)
                cases = loaded.cases
                if not cases:
                    raise DataError(f"{files[d.name]}: no usable records in the {split} split")
            say(f"{label}: {len(cases)} records")
            settings = BenchSettings(method=cell.method, params=dict(params.get(cell.method, {})), seed=seed)
            info = {"data_path": str(files[d.name]), "data_sha256": data_sha256(files[d.name]), "format": cases[0].format,
                    "split": split, "limit": limit, "records": [c.index for c in cases], "dataset": d.name}  # fmt: skip
            started = time.perf_counter()
            result = run_bench(model, cases, settings, registry=registry, data=info, unedited=unedited,
                               progress=lambda i, n, msg, lab=label: say(f"{lab} [{i}/{n}] {msg}"), ranks=ranks)  # fmt: skip
            record = result.to_json()
            record["cell"] = {"key": cell.key, "dataset": d.name, "method": cell.method, "wall_seconds": time.perf_counter() - started}
            if ranks is None or ranks.is_main:
                _write_atomic(cell.path, record)
            results.setdefault(d.name, {})[cell.method] = record
            say(f"{label}: finished in {record['cell']['wall_seconds']:.0f} s")
    if ranks is None or ranks.is_main:
        everything = collect_results(SUITES[suite_name], out)  # cells of earlier runs too
        write_summaries(suite_name, SUITES[suite_name], everything, out)
    return {d: {m: r["aggregate"] for m, r in by_m.items()} for d, by_m in results.items()}


def collect_results(suite: Sequence[SuiteDataset], out: Path) -> dict[str, dict[str, Any]]:
    """Every finished cell under ``out``: ``{dataset: {method: record}}``."""
    found: dict[str, dict[str, Any]] = {}
    for d in suite:
        cells = {}
        for path in sorted((out / d.name).glob("*.json")) if (out / d.name).is_dir() else []:
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("%s is not readable JSON; left out of the table", path)
                continue
            if "aggregate" in record and "cell" in record:
                cells[record["cell"]["method"]] = record
        if cells:
            found[d.name] = cells
    return found


def check_suite(registry: Registry, suite_name: str, methods: Sequence[str], datasets: Sequence[str] | None) -> tuple[SuiteDataset, ...]:
    """The suite's datasets (all, or those named), after checking every name; no model needed."""
    if suite_name not in SUITES:
        raise UsageError(f"unknown suite `{suite_name}`", did_you_mean(suite_name, list(SUITES)) or "suites: " + ", ".join(SUITES))
    if not methods:
        raise UsageError("a suite needs at least one method", "give --methods rome,ft_m,...")
    for m in methods:
        check_settings(registry, BenchSettings(method=m))
    suite = SUITES[suite_name]
    if datasets:
        names = [d.name for d in suite]
        for name in datasets:
            if name not in names:
                raise UsageError(f"suite `{suite_name}` has no dataset `{name}`", did_you_mean(name, names) or "datasets: " + ", ".join(names))
        suite = tuple(d for d in suite if d.name in datasets)
    return suite


def _finished(cell: Cell) -> dict[str, Any] | None:
    """The cell's record if it was finished with the same settings (else None: run it)."""
    if not cell.path.is_file():
        return None
    try:
        record = json.loads(cell.path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (record.get("cell") or {}).get("key") != cell.key:
        return None
    # a changed default or preset changes the numbers too, though no setting given changed
    same = canonical_json((record.get("config") or {}).get("params")) == canonical_json(cell.params)
    return record if same else None


def _write_atomic(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_temp(path)
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


# -- the summaries ------------------------------------------------------------------------------------
def write_summaries(suite_name: str, suite: Sequence[SuiteDataset], results: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    """``OUT/<dataset>.json`` for each dataset and ``OUT/<suite>_table.md``."""
    written = []
    for d in suite:
        by_method = results.get(d.name, {})
        if not by_method:
            continue
        summary = {
            "dataset": d.name,
            "task": d.task,
            "rows": list(d.rows),
            "methods": {m: {"aggregate": r["aggregate"], "config": {k: r["config"].get(k) for k in (
                "model", "model_fingerprint", "params", "mode", "seed", "data_path", "data_sha256", "split", "records", "protocols", "versions")},
                "wall_seconds": (r.get("cell") or {}).get("wall_seconds")} for m, r in by_method.items()},
            "paper": {row: PAPER.get((d.name, row)) for row in d.rows if (d.name, row) in PAPER},
        }  # fmt: skip
        path = out / f"{d.name}.json"
        _write_atomic(path, summary)
        written.append(path)
    table = out / f"{suite_name}_table.md"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(render_suite_table(suite, results), encoding="utf-8")
    written.append(table)
    return written


def _cell_text(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if metric == "fluency" else f"{100 * value:.2f}"


def render_suite_table(suite: Sequence[SuiteDataset], results: dict[str, dict[str, Any]]) -> str:
    """The paper's layout: a row per dataset and metric, a column per method; each cell is
    ours, then the paper's Llama-2-7b-chat number in parentheses where the paper has it."""
    found = {m for by_m in results.values() for m in by_m}
    methods = sorted(found, key=lambda m: (COLUMN_ORDER.index(m) if m in COLUMN_ORDER else len(COLUMN_ORDER), m))
    head = ["Dataset", "Metric"] + [m + (f" ({PAPER_METHODS[m]})" if m in PAPER_METHODS else "") for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---", ":---"] + ["---:"] * len(methods)) + "|"]
    counts = []
    for d in suite:
        by_m = results.get(d.name, {})
        if not by_m:
            continue
        lines.append(f"| **{d.name}** ({d.task}) |" + " |" * (len(methods) + 1))
        for row in d.rows:
            cells = []
            for m in methods:
                agg = (by_m.get(m) or {}).get("aggregate") or {}
                ours = _cell_text(row, agg.get(row)) if m in by_m else ""
                paper = (PAPER.get((d.name, row)) or {}).get(PAPER_METHODS.get(m, ""))
                cells.append(ours + (f" ({paper:.2f})" if paper is not None and ours else ""))
            lines.append(f"| | {ROW_LABELS.get(row, LABELS.get(row, row))} | " + " | ".join(cells) + " |")
        ns = {m: (by_m[m]["aggregate"].get("cases"), by_m[m]["aggregate"].get("failed")) for m in methods if m in by_m}
        counts.append(f"{d.name}: " + ", ".join(f"{m} {n - f}/{n}" for m, (n, f) in ns.items()))
    lines += ["", "Ours: SmolLM2 or the model the run names; in parentheses: the KnowEdit paper's Llama-2-7b-chat "
              "(EasyEdit, examples/KnowEdit.md). Accuracies in %, fluency x100. Edited cases per cell (of those run): "
              + "; ".join(counts) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"
