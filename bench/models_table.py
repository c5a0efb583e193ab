"""Every method on every real model: held-out ZsRE records, seconds per edit and peak memory.

Each cell (model x method) is one `kedsl bench` process on `zsre_eval_head.json`
(held-out records from --offset, default 500-549), run alone, one after another; its JSON
goes to OUT/<model>/<method>.json with the process's peak RSS added, and a finished cell
is never run again (kill the script and start it again to resume). Then the table:

    .venv/bin/python bench/models_table.py --models smollm2-135m,gemma3-270m,qwen2.5-coder-0.5b \
        --methods rome,memit,alphaedit,ft_l,ft_m,lora,adalora,ike,grace,rome+layer=auto --out bench/results/models
    .venv/bin/python bench/models_table.py --out bench/results/models --table-only

MEND and SERAC need an editor trained for the model (`kedsl train`): give it with
--param mend.editor=DIR (the same form as `kedsl bench --suite`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

METRICS = "efficacy,generalization,locality,efficacy_gen"
COLUMNS = ("efficacy", "generalization", "locality", "efficacy_gen")


def run_cell(model: str, cell: str, args: argparse.Namespace, params: list[str]) -> None:
    """``cell`` is a method name, optionally with parameters of its own after ``+``
    (``rome+layer=auto``): a variant gets its own row."""
    method, *own = cell.split("+")
    params = params + own
    out = args.out / (model + (f"@{args.dtype}" if args.dtype else "")) / f"{cell}.json"
    if out.is_file():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    kedsl = Path(sys.executable).with_name("kedsl")
    cmd = [str(kedsl), "bench", str(args.data), "--model", model, "--method", method, "--offset", str(args.offset),
           "--limit", str(args.limit), "--metrics", METRICS, "--json", str(out) + ".partial"]  # fmt: skip
    for p in params:
        cmd += ["--param", p]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    print(f"{time.strftime('%H:%M:%S')} {model} x {method}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    partial = Path(str(out) + ".partial")
    if os.waitstatus_to_exitcode(status) != 0 or not partial.is_file():
        print(f"  failed (exit {os.waitstatus_to_exitcode(status)}); nothing written", flush=True)
        return
    record = json.loads(partial.read_text())
    record["process"] = {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "wall_seconds": round(wall, 1), "command": cmd[1:], "cpu": cpu_description()}
    out.write_text(json.dumps(record, indent=1) + "\n")
    partial.unlink()


def cpu_description() -> str:
    """The CPU's model name and its native bf16 support (seconds per edit depend on both:
    kedsl searches in bf16 only where it is native)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    native = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"{name}, {os.cpu_count()} cores, " + (" ".join(native) if native else "no native bf16")


def table(out: Path) -> str:
    rows = ["| model | method | efficacy | generalization | locality | efficacy (generation) | s/edit | peak RSS (MB) | cases |",
            "| :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for path in sorted(out.glob("*/*.json")):
        record = json.loads(path.read_text())
        agg = record["aggregate"]
        vals = [agg.get(c) for c in COLUMNS]
        cells = [f"{100 * v:.2f}" if isinstance(v, (int, float)) else "" for v in vals]
        spe = agg.get("seconds_per_edit")
        rows.append(f"| {path.parent.name} | `{path.stem}` | " + " | ".join(cells)
                    + f" | {spe:.2f} | {record['process']['peak_rss_mb']:.0f} | {agg['cases'] - agg.get('failed', 0)}/{agg['cases']} |")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m,qwen2.5-coder-0.5b")
    ap.add_argument("--methods", default="rome,memit,alphaedit,ft_l,ft_m,lora,adalora,ike,grace")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/zsre_eval_head.json"))
    ap.add_argument("--offset", type=int, default=500)
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--param", action="append", default=[], help="METHOD.NAME=VALUE (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/models"))
    ap.add_argument("--dtype", help="load the weights in this dtype (bfloat16, float16); its cells go to OUT/<model>@<dtype>/")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if not args.table_only:
        for model in args.models.split(","):
            for method in args.methods.split(","):
                params = [p.split(".", 1)[1] for p in args.param if p.startswith(method.split("+")[0] + ".")]
                run_cell(model, method, args, params)
    text = table(args.out)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
