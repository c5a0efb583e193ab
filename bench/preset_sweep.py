"""Choose a preset by measurement: one method parameter swept on a model, on ZsRE tuning
records only (SPLITS.json `tune`: zsre_eval_head.json 0-499).

Each value is one `kedsl bench` process, run alone; its JSON goes to
OUT/<model>/<method>/<param>=<value>.json and a finished value is never run again (start
the script again to resume). Then the table, efficacy/generalization/locality and seconds
per edit per value:

    .venv/bin/python bench/preset_sweep.py --model gemma3-270m --method rome --param layer \
        --values 2,3,4,5,6,8 --limit 20
    .venv/bin/python bench/preset_sweep.py --model gemma3-270m --method memit --param layers \
        --values 1..5,2..6,3..8 --limit 20 --set spread_passes=2

--set fixes other parameters for every value (repeatable). A value with `..` is a layer
range. The numbers are on tuning records: a preset chosen here is then reported on
held-out records (bench/models_table.py).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

METRICS = "efficacy,generalization,locality,efficacy_gen"


def cell_path(args: argparse.Namespace, value: str) -> Path:
    extra = "".join(f",{s}" for s in args.set).replace("/", "_")  # a path given with --set stays one file name
    return args.out / args.model / args.method / f"{args.param}={value}{extra}.json"


def run(args: argparse.Namespace, value: str) -> None:
    out = cell_path(args, value)
    if out.is_file():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    kedsl = Path(sys.executable).with_name("kedsl")
    cmd = [str(kedsl), "bench", str(args.data), "--model", args.model, "--method", args.method, "--split", "tune",
           "--offset", str(args.offset), "--limit", str(args.limit), "--metrics", METRICS,
           "--param", f"{args.param}={value}", "--json", str(partial)]  # fmt: skip
    for s in args.set:
        cmd += ["--param", s]
    print(f"{time.strftime('%H:%M:%S')} {' '.join(cmd[1:])}", flush=True)
    if subprocess.call(cmd) == 0 and partial.is_file():
        partial.rename(out)
    else:
        print(f"  {args.param}={value} failed; nothing written", flush=True)


def table(args: argparse.Namespace) -> str:
    rows = [f"{args.model}, {args.method}, {args.param} (ZsRE tuning records, --offset {args.offset} --limit {args.limit}"
            + (f", {' '.join(args.set)}" if args.set else "") + ")",
            "", f"| {args.param} | efficacy | generalization | locality | efficacy (generation) | s/edit |",
            "| :--- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for value in args.values.split(","):
        path = cell_path(args, value)
        if not path.is_file():
            rows.append(f"| {value} | (not run) | | | | |")
            continue
        agg = json.loads(path.read_text())["aggregate"]
        vals = " | ".join(f"{100 * agg[k]:.2f}" if isinstance(agg.get(k), (int, float)) else "" for k in METRICS.split(","))
        rows.append(f"| {value} | {vals} | {agg.get('seconds_per_edit', 0):.2f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--method", required=True)
    ap.add_argument("--param", required=True, help="the parameter swept, e.g. layer")
    ap.add_argument("--values", required=True, help="comma-separated values; a..b for a layer range")
    ap.add_argument("--set", action="append", default=[], help="NAME=VALUE fixed for every value (repeatable)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/zsre_eval_head.json"))
    ap.add_argument("--offset", type=int, default=0, help="position in the tuning split")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("bench/results/presets"))
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if not args.table_only:
        for value in args.values.split(","):
            run(args, value)
    print(table(args))


if __name__ == "__main__":
    main()
