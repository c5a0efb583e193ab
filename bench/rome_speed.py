"""ROME speed (and quality) on SmolLM2-135M-Instruct over ZsRE records.

Prints the one-time statistics cost, the median seconds per edit with statistics cached,
peak memory, and the quality of the same edits (each edit applied to the unedited model,
scored, then undone): efficacy and generalization = teacher-forced token accuracy of the
new target after the edit prompt / its paraphrase; locality = share of the locality
answer's tokens whose argmax is unchanged by the edit.

    .venv/bin/python bench/rome_speed.py --records 0:20 [--set v_steps=25 --set bf16=false]
    .venv/bin/python bench/rome_speed.py --records 0:5 --profile
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
ZSRE = REPO.parent / "shared" / "data" / "zsre_eval_head.json"
MAX_TUNING_RECORD = 499  # records 500+ are held out: never tune on them


def load_smollm2():
    from kedsl.model.loading import load_model

    return load_model("smollm2-135m", {})


def zsre_records(spec: str) -> list[dict[str, Any]]:
    a, _, b = spec.partition(":")
    start, stop = int(a), int(b)
    if stop - 1 > MAX_TUNING_RECORD:
        raise SystemExit(f"records {spec}: tuning uses only records 0-{MAX_TUNING_RECORD}")
    records = [dict(r, record=start + i) for i, r in enumerate(json.loads(ZSRE.read_text())[start:stop])]
    kept = [r for r in records if r["alt"].strip()]  # 6 records of the file have no new target
    if len(kept) < len(records):
        logging.getLogger("bench").warning("skipped %d record(s) with an empty target", len(records) - len(kept))
    return kept


def parse_sets(sets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in sets:
        k, _, v = s.partition("=")
        low = v.lower()
        if low in ("true", "false"):
            out[k] = low == "true"
        else:
            try:
                out[k] = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                out[k] = v
    return out


def rome_params(model, given: dict[str, Any]) -> dict[str, Any]:
    import kedsl_rome
    from kedsl.registry import Registry
    from kedsl.registry.presets import params_for

    return params_for(Registry(plugins=[kedsl_rome], entry_points=False).method("rome"), given, model).params


def evaluate(model, records: list[dict[str, Any]], params: dict[str, Any], profile: bool = False) -> list[dict[str, Any]]:
    """Apply ROME for each record to the unedited model, score, undo. One row per record."""
    from kedsl.editing.outcome import EditContext
    from kedsl.editing.request import EditRequest
    from kedsl.model.journal import WeightJournal
    from kedsl.toolkit.scoring import teacher_forced
    from kedsl_rome.rome import ROME

    method = ROME()
    base_loc = teacher_forced(model, [(r["loc"], r["loc_ans"]) for r in records])
    fp0 = None
    rows = []
    for i, (rec, loc0) in enumerate(zip(records, base_loc)):
        req = EditRequest(subject=rec["subject"], prompt=rec["src"], target=rec["alt"])
        ctx = EditContext(weights=WeightJournal(model.model), cache_dir=Path("/tmp"), seed=0)
        t = time.perf_counter()
        if profile:
            from torch.profiler import ProfilerActivity, profile as tprofile

            with tprofile(activities=[ProfilerActivity.CPU]) as prof:
                outcome = method.apply(model, [req], params, ctx)
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
        else:
            outcome = method.apply(model, [req], params, ctx)
        secs = time.perf_counter() - t
        eff, gen, loc = teacher_forced(model, [(rec["src"], rec["alt"]), (rec["rephrase"], rec["alt"]), (rec["loc"], rec["loc_ans"])])
        locality = sum(int(a == b) for a, b in zip(loc.predicted, loc0.predicted)) / len(loc0.predicted)
        outcome.undo(model)
        rows.append(
            dict(
                record=rec.get("record", i),
                efficacy=eff.accuracy,
                generalization=gen.accuracy,
                locality=locality,
                seconds=secs,
                steps=outcome.info["steps"],
                search_seconds=outcome.info["search_seconds"],
                target_prob=outcome.info["target_prob"],
            )
        )
        logging.getLogger("bench").info("record %d: %s", i, rows[-1])
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    return dict(
        n=len(rows),
        efficacy=mean("efficacy"),
        generalization=mean("generalization"),
        locality=mean("locality"),
        median_seconds=statistics.median(r["seconds"] for r in rows),
        mean_steps=mean("steps"),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", default="0:20", help="ZsRE record range a:b (b <= 500)")
    ap.add_argument("--set", action="append", default=[], help="ROME parameter k=v (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="torch profiler table per edit")
    ap.add_argument("-v", action="store_true", help="log per record")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.v else logging.WARNING, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    model = load_smollm2()
    params = rome_params(model, parse_sets(args.set))
    records = zsre_records(args.records)

    from kedsl.toolkit.stats import second_moment, stats_path

    cached = stats_path(model, params["layer"], params["stats_corpus"], params["mom2_samples"], params["seed"] or 0).exists()
    t = time.perf_counter()
    if params["mom2_update_weight"] > 0:
        second_moment(model, params["layer"], params["stats_corpus"], params["mom2_samples"], params["seed"] or 0)
    stats_s = time.perf_counter() - t
    # warm-up edit (context templates, first-call overheads) is not timed
    evaluate(model, records[:1], params)
    rows = evaluate(model, records, params, profile=args.profile)
    s = summarize(rows)
    print(f"params: {json.dumps(params)}")
    print(f"statistics: {'cached' if cached else 'computed'} in {stats_s:.1f}s (layer {params['layer']}, {params['mom2_samples']} tokens)")
    print(
        f"records {args.records}: n={s['n']} efficacy={s['efficacy']:.3f} generalization={s['generalization']:.3f} "
        f"locality={s['locality']:.3f} median_s_per_edit={s['median_seconds']:.2f} mean_steps={s['mean_steps']:.1f}"
    )
    print(f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    sys.exit(main())
