"""Lifelong editing compared: each method makes the same sequence of held-out ZsRE edits
(500-1499 by default) on SmolLM2, measured every --every edits (the degradation curve),
then one PNG with a panel per metric and a line per method.

    .venv/bin/python bench/lifelong_curves.py --methods ultraedit:100,wise,alphaedit,memit:100,grace \
        [--offset 500 --limit 1000 --every 100] [--param ultraedit.lr=3e-5] [--out bench/results/lifelong]

A method is given as NAME or NAME:TURN, TURN being the edits per method call (a batch
method's turn; 1 for the others). Each run is one `kedsl bench --mode sequential
--checkpoints EVERY --checkpoint-dir ...` process, run alone, one after another: killed, the
same command resumes it from its last checkpoint, and a finished method (its JSON in
--out) is not run again. --param METHOD.NAME=VALUE passes a parameter to one method.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "zsre_eval_head.json"


def run_method(kedsl: Path, method: str, turn: int, args: argparse.Namespace, params: list[str]) -> Path | None:
    out = args.out / f"{method}.json"
    if out.is_file():
        print(f"{method}: done before ({out})", flush=True)
        return out
    cmd = [str(kedsl), "bench", str(args.data), "--model", args.model, "--method", method, "--mode", "sequential",
           "--offset", str(args.offset), "--limit", str(args.limit), "--checkpoints", str(args.every),
           "--checkpoint-dir", str(args.out / f"checkpoints-{method}"), "--json", str(out) + ".partial",
           "--plot", str(args.out / f"{method}.png"), "--metrics", args.metrics]  # fmt: skip
    if turn > 1:
        cmd += ["--batch-size", str(turn)]
    for p in params:
        cmd += ["--param", p]
    print(f"{time.strftime('%H:%M:%S')} {method}: {' '.join(cmd[1:])}", flush=True)
    code = subprocess.call(cmd)
    partial = Path(str(out) + ".partial")
    if code != 0 or not partial.is_file():
        print(f"{method}: failed (exit {code}); nothing written", flush=True)
        return None
    partial.rename(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", required=True, help="NAME or NAME:TURN, comma-separated")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--offset", type=int, default=500)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--metrics", default="efficacy,generalization,locality,fluency,efficacy_gen")
    ap.add_argument("--param", action="append", default=[], help="METHOD.NAME=VALUE")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lifelong")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kedsl = Path(sys.executable).with_name("kedsl")
    done = []
    for item in args.methods.split(","):
        method, _, turn = item.partition(":")
        own = [p.split(".", 1)[1] for p in args.param if p.split(".", 1)[0] == method]
        result = run_method(kedsl, method, int(turn or 1), args, own)
        if result is not None:
            done.append(result)
    if done:
        subprocess.check_call([str(kedsl), "curve", *map(str, done), "--out", str(args.out / "curves.png"),
                               "--title", f"{args.limit} sequential held-out ZsRE edits ({args.model})"])  # fmt: skip
        for path in done:
            final = json.loads(path.read_text())["curve"][-1]
            print(f"{path.stem:<12} after {final['edits']}: " + "  ".join(f"{k} {v:.4f}" for k, v in final["metrics"].items() if v is not None))


if __name__ == "__main__":
    main()
