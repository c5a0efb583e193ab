"""Wall time of a `kedsl bench --suite knowedit` run, per method and dataset, read from its
cells (each records its wall time, the method's seconds per edit and its cases):

    .venv/bin/python bench/knowedit_speed.py bench/results/knowedit

prints, per cell, the wall seconds, the method's seconds per edit and the evaluation's
seconds per case (wall - method time, over the cases: baselines, metrics, undo), then the
totals per method and per dataset. Timings are only comparable between cells that ran
alone on the machine; the run's log says what else ran.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the suite's --out folder")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    rows = []
    for path in sorted(args.out.glob("*/*.json")):
        record = json.loads(path.read_text())
        if "cell" not in record:
            continue
        agg, cell = record["aggregate"], record["cell"]
        edited = agg["cases"] - agg["failed"]
        method_s = (agg.get("seconds_per_edit") or 0.0) * edited
        rows.append({
            "dataset": cell["dataset"], "method": cell["method"], "cases": agg["cases"], "wall_s": cell["wall_seconds"],
            "s_per_edit": agg.get("seconds_per_edit"), "eval_s_per_case": (cell["wall_seconds"] - method_s) / max(1, agg["cases"]),
        })  # fmt: skip
    print(f"{'dataset':<22} {'method':<10} {'cases':>5} {'wall s':>8} {'s/edit':>7} {'eval s/case':>11}")
    for r in rows:
        spe = f"{r['s_per_edit']:.2f}" if r["s_per_edit"] is not None else "n/a"
        print(f"{r['dataset']:<22} {r['method']:<10} {r['cases']:>5} {r['wall_s']:>8.0f} {spe:>7} {r['eval_s_per_case']:>11.2f}")
    for key in ("method", "dataset"):
        totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for r in rows:
            totals[r[key]][0] += r["wall_s"]
            totals[r[key]][1] += r["cases"]
        print(f"\nper {key}: " + ", ".join(f"{k} {v[0] / 60:.1f} min ({v[0] / max(1, v[1]):.1f} s/case)" for k, v in totals.items()))
    whole = sum(r["wall_s"] for r in rows)
    print(f"\nthe whole suite: {whole / 3600:.2f} h for {sum(r['cases'] for r in rows)} cases in {len(rows)} cells")
    if args.json:
        args.json.write_text(json.dumps({"cells": rows, "total_wall_s": whole}, indent=1))


if __name__ == "__main__":
    main()
