"""How long `kedsl check` takes, as a whole process, on a script whose `edits from`
statement names a 10,000-row CSV file (every row read and validated).

    .venv/bin/python bench/check_data_speed.py [--rows 10000] [--runs 5] [--data ../shared/data/zsre_eval_head.json]

The CSV is built in a temporary folder from the held-out ZsRE records (500 onward):
subject, prompt, target, old answer, paraphrase and locality prompt. Past the end of the
records the facts repeat with a numbered question (`Question 2: ...`), so that no two rows
are the same edit. Prints each run's wall time and the median (target: under 1.0 s).
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

from check_speed import time_check  # bench/ is on the path when this file runs

HELD_OUT_FROM = 500
DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "zsre_eval_head.json"


def zsre_rows(path: Path, n: int) -> list[dict[str, str]]:
    """``n`` CSV rows of held-out ZsRE facts (records whose new target is given and differs
    from the old one), repeated with a numbered question once the records run out."""
    records = [r for r in json.loads(path.read_text(encoding="utf-8"))[HELD_OUT_FROM:]
               if r.get("alt", "").strip() and r["alt"].strip() != r["answers"][0].strip()]  # fmt: skip
    rows = []
    for i in range(n):
        r = records[i % len(records)]
        copy = i // len(records)
        prompt = r["src"] if copy == 0 else f"Question {copy + 1}: {r['src']}"
        rows.append({
            "subject": r["subject"], "prompt": prompt, "target": r["alt"].strip(), "old": r["answers"][0].strip(),
            "paraphrases": r["rephrase"], "locality": r["loc"],
        })  # fmt: skip
    return rows


def write_csv(rows: list[dict[str, str]], path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


SCRIPT = """model "smollm2-135m";

batch using memit {
    edits from "facts.csv"
        expect efficacy >= 0.9
        expect generalization
        expect locality;
}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        write_csv(zsre_rows(args.data, args.rows), Path(d) / "facts.csv")
        script = Path(d) / "from_data.ke"
        script.write_text(SCRIPT, encoding="utf-8")
        times, out = time_check(str(script), d, args.runs)
        if out.returncode != 0:
            sys.exit(f"kedsl check failed (exit {out.returncode}): {out.stderr[-2000:]}")
        print(f"median of {args.runs}: {statistics.median(times):.3f} s for a {args.rows}-row CSV (exit {out.returncode})")


if __name__ == "__main__":
    main()
