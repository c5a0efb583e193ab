"""UltraEdit at scale: seconds per edit after 100, 1,000 and 10,000 sequential edits, peak
memory, and the final efficacy and locality of the first and the last 1,000 edits.

    .venv/bin/python bench/ultraedit_speed.py [--data ../shared/data/train/counterfact_train.json]
        [--count 10000] [--turn 100] [--checkpoints 1000] [--out bench/results/ultraedit/scale]
        [--param NAME=VALUE ...]

One `kedsl bench --mode sequential` process in turns of --turn edits, with the
degradation curve every --checkpoints edits and a resumable checkpoint there (kill this
script, start it again with the same arguments, and the run continues from the last
checkpoint: OUT/checkpoint). The result is OUT/result.json (the bench JSON) and OUT/curve.png.
Seconds per edit at N are the method's own seconds over the first N edits (each case
records its share of its turn), so the measurement does not include the curve's
measuring. Peak RSS is the bench process's (the last one, if the run was resumed).
Run it alone: two heavy processes on two cores slow each other.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "train" / "counterfact_train.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--turn", type=int, default=100, help="edits per UltraEdit turn")
    ap.add_argument("--checkpoints", type=int, default=1000, help="curve point and resumable checkpoint every this many edits")
    ap.add_argument("--metrics", default="efficacy,locality")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ultraedit" / "scale")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = args.out / "result.json"
    kedsl = str(Path(sys.executable).with_name("kedsl"))
    cmd = [kedsl, "bench", str(args.data), "--model", args.model, "--method", "ultraedit", "--mode", "sequential",
           "--batch-size", str(args.turn), "--limit", str(args.count), "--metrics", args.metrics,
           "--checkpoints", str(args.checkpoints), "--checkpoint-dir", str(args.out / "checkpoint"),
           "--json", str(result), "--plot", str(args.out / "curve.png")]  # fmt: skip
    for p in args.param:
        cmd += ["--param", p]
    print("+ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"kedsl bench failed (exit {proc.returncode})")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    doc = json.loads(result.read_text(encoding="utf-8"))
    cases = doc["cases"]
    spent = [c["seconds"] or 0.0 for c in cases]
    print(f"\n{len(cases)} sequential edits in turns of {args.turn}; this process's wall time {wall:.0f} s; peak RSS {peak_mb:.0f} MB")
    for n in (100, 1000, 10000):
        if n <= len(cases):
            print(f"  seconds per edit over the first {n:>6}: {sum(spent[:n]) / n:.3f}")
    for label, part in (("first 1,000", cases[:1000]), ("last 1,000", cases[-1000:])):
        means = {}
        for m in args.metrics.split(","):
            vals = [c["metrics"].get(m) for c in part if c["metrics"].get(m) is not None]
            means[m] = sum(vals) / len(vals) if vals else float("nan")
        print(f"  {label}, measured at the end: " + ", ".join(f"{m} {v:.4f}" for m, v in means.items()))
    print("  curve: " + "; ".join(f"{p['edits']}: " + ", ".join(f"{m} {v:.3f}" for m, v in p["metrics"].items() if v is not None) for p in doc.get("curve", [])))
    summary = {"edits": len(cases), "turn": args.turn, "wall_seconds": wall, "peak_rss_mb": peak_mb,
               "seconds_per_edit": {n: sum(spent[:n]) / n for n in (100, 1000, 10000) if n <= len(cases)}}  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
