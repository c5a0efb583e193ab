"""How long `kedsl check` takes, as a whole process, on a 1,000-edit script.

    .venv/bin/python bench/check_speed.py [--edits 1000] [--runs 5]

Prints each run's wall time and the median (target: under 1.0 s).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

RELATIONS = ["P103", "P159", "P112", "P17"]


def make_script(n: int) -> str:
    lines = ['model "smollm2-135m";', 'relation located_in "{} is located in the city of"',
             '    paraphrase "{} can be found in the city of";', "use rome;", ""]
    for i in range(n):
        rel = "located_in" if i % 5 == 0 else RELATIONS[i % len(RELATIONS)]
        lines.append(f'edit "Subject number {i}" {rel} -> "Target {i}" from "Old {i}"')
        lines.append("    expect efficacy >= 0.9")
        lines.append(f'    expect locality "The Louvre number {i} is located in the city of" unchanged;')
    return "\n".join(lines) + "\n"


def time_check(script: str, cwd: str, runs: int) -> tuple[list[float], subprocess.CompletedProcess]:
    """Run `kedsl check SCRIPT` once to warm up, then ``runs`` times; print each wall time.
    Returns the times and the last run's process."""
    kedsl = shutil.which("kedsl", path=os.path.dirname(sys.executable)) or "kedsl"
    times = []
    for i in range(runs + 1):  # the first run warms the OS file cache and Lark's grammar cache
        t = time.perf_counter()
        out = subprocess.run([kedsl, "check", script], capture_output=True, text=True, cwd=cwd)
        dt = time.perf_counter() - t
        if i == 0:
            print(f"warm-up: {dt:.3f} s  ({out.stdout.strip() or out.stderr.strip().splitlines()[-1]})")
            continue
        times.append(dt)
        print(f"run {i}: {dt:.3f} s")
    return times, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "big.ke")
        with open(path, "w") as f:
            f.write(make_script(args.edits))
        times, out = time_check(path, d, args.runs)
        print(f"median of {args.runs}: {statistics.median(times):.3f} s for {args.edits} edits (exit {out.returncode})")


if __name__ == "__main__":
    main()
