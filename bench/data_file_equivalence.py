"""Held-out ZsRE facts applied from a CSV file and from written statements, both in one
`batch using memit` through the `kedsl apply` command: the efficacy of each and the
fingerprints of the two edited models (the same facts in the same order must give the
same weights).

    .venv/bin/python bench/data_file_equivalence.py [--count 1000] [--start 500] [--model smollm2-135m]
        [--data ../shared/data/zsre_eval_head.json] [--work DIR] [--memit-args "layers=[3, 4, 5]"] [--parallel]

The facts are the first COUNT records from record START (held-out ZsRE: 500 onward) that
have a new target (4 of records 500-1499 have none), as CSV columns subject, prompt,
target; the written script has one `edit prompt "..." subject "..." -> "...";` per fact
in the same order. Both runs measure `expect efficacy` with `on_fail keep` (a failing
row must not roll the batch back) and write `--report` CSVs; the efficacy printed is the
mean over those rows. The scripts, data, databases and reports stay in --work.

`--parallel` runs the two applies side by side, each with one thread (OMP_NUM_THREADS=1):
on a 2-core machine that halves the wall time, and the fingerprints still compare because
both runs use the same thread count. The times it prints are then not single-run timings.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kedsl.lang.fmt import quote

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "zsre_eval_head.json"


def held_out_facts(path: Path, start: int, count: int) -> list[dict[str, str]]:
    """``count`` ZsRE facts from record ``start`` on, skipping records without a new target."""
    facts = []
    for r in json.loads(path.read_text(encoding="utf-8"))[start:]:
        if r.get("alt", "").strip():
            facts.append({"subject": r["subject"], "prompt": r["src"], "target": r["alt"].strip()})
        if len(facts) == count:
            return facts
    sys.exit(f"{path} has only {len(facts)} facts with a target from record {start} on")


def write_inputs(work: Path, facts: list[dict[str, str]], model: str, memit: str) -> tuple[Path, Path]:
    with open(work / "facts.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["subject", "prompt", "target"])
        w.writeheader()
        w.writerows(facts)
    head = f"model {quote(model)};\non_fail keep;\n\nbatch using {memit} {{\n"
    data = work / "from_data.ke"
    data.write_text(head + '    edits from "facts.csv"\n        expect efficacy;\n}\n', encoding="utf-8")
    written = work / "written.ke"
    written.write_text(
        head
        + "".join(f"    edit prompt {quote(x['prompt'])} subject {quote(x['subject'])} -> {quote(x['target'])}\n"
                  "        expect efficacy;\n" for x in facts)
        + "}\n",
        encoding="utf-8",
    )  # fmt: skip
    return data, written


def start(kedsl: str, script: Path, work: Path, env: dict[str, str] | None) -> subprocess.Popen[str]:
    """Start `kedsl apply` on ``script`` with a per-row report beside it."""
    db, report = work / f"{script.stem}.db", work / f"{script.stem}.report.csv"
    with open(work / f"{script.stem}.stderr", "w", encoding="utf-8") as err:
        return subprocess.Popen([kedsl, "apply", str(script), "--db", str(db), "--report", str(report)], cwd=work,
                                stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)  # fmt: skip


def collect(kedsl: str, script: Path, work: Path, proc: subprocess.Popen[str], began: float) -> dict[str, object]:
    """Wait for the apply of ``script``; its wall time, mean efficacy and fingerprint."""
    code = proc.wait()
    seconds = time.perf_counter() - began
    if code not in (0, 1):  # 1: some expectation failed, the edits kept
        tail = (work / f"{script.stem}.stderr").read_text(encoding="utf-8")[-3000:]
        sys.exit(f"kedsl apply {script.name} failed (exit {code}):\n{tail}")
    db, report = work / f"{script.stem}.db", work / f"{script.stem}.report.csv"
    with open(report, encoding="utf-8") as f:
        values = [float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "efficacy" and r["value"] != ""]
    log = subprocess.run([kedsl, "log", "--json", "--db", str(db)], capture_output=True, text=True, check=True)
    (run,) = json.loads(log.stdout)
    return {"seconds": seconds, "efficacy": sum(values) / len(values), "rows": len(values),
            "fingerprint": run["fingerprint_after"], "status": run["status"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--start", type=int, default=500)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--memit-args", default="", help="MEMIT's parameters as in a script, e.g. 'layers=[3, 4, 5]'.")
    ap.add_argument("--work", type=Path, default=None, help="Where the scripts, data and results go (default: a new temp folder).")
    ap.add_argument("--parallel", action="store_true", help="Run both applies at once, one thread each.")
    args = ap.parse_args()
    kedsl = shutil.which("kedsl", path=os.path.dirname(sys.executable)) or "kedsl"
    work = args.work or Path(tempfile.mkdtemp(prefix="kedsl-data-equivalence-"))
    work.mkdir(parents=True, exist_ok=True)
    memit = f"memit({args.memit_args})" if args.memit_args else "memit"
    facts = held_out_facts(args.data, args.start, args.count)
    data, written = write_inputs(work, facts, args.model, memit)
    print(f"{len(facts)} facts from record {args.start} of {args.data}; work folder {work}")
    results = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.parallel else None
    scripts = (data, written)
    if args.parallel:
        began = time.perf_counter()
        running = [(script, start(kedsl, script, work, env)) for script in scripts]
        runs = [(script, collect(kedsl, script, work, proc, began)) for script, proc in running]
    else:
        runs = []
        for script in scripts:
            began = time.perf_counter()
            runs.append((script, collect(kedsl, script, work, start(kedsl, script, work, env), began)))
    for script, r in runs:
        results[script.stem] = r
        print(f"{script.name:<14} efficacy {r['efficacy']:.4f} over {r['rows']} rows  fingerprint {r['fingerprint']}  "
              f"({r['status']}, {r['seconds']:.0f} s)")  # fmt: skip
    same = results["from_data"]["fingerprint"] == results["written"]["fingerprint"]
    print("fingerprints " + ("MATCH" if same else "DIFFER"))
    (work / "result.json").write_text(json.dumps({"facts": len(facts), "start": args.start, "model": args.model, "parallel": args.parallel, **results}, indent=1))
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
