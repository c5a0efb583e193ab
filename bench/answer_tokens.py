"""Where a sequential run's accuracy is lost, token by token: from `kedsl bench` result
JSONs, the accuracy of the first answer token (predicted at the prompt's last position,
which a paraphrase rewords) and of the later ones (teacher-forced behind the answer's own
first tokens), on the edit prompts (efficacy) and their paraphrases (generalization), per
block of edits in the order they were made.

    .venv/bin/python bench/answer_tokens.py RESULT.json [RESULT.json ...] [--block 200] [--json OUT]

Reads the per-case details every bench JSON keeps (`target_ids`, `predicted`); prints one
markdown table per file.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

METRICS = ("efficacy", "generalization")


def token_accuracy(cases: list[dict[str, Any]], metric: str) -> dict[str, float | int]:
    """First-token and later-token accuracy of ``metric`` over ``cases`` (token-weighted)."""
    first = [0, 0]
    later = [0, 0]
    for case in cases:
        details = (case.get("details") or {}).get(metric)
        if not details:
            continue
        for target, predicted in zip(details["target_ids"], details["predicted"]):
            first[0] += target[0] == predicted[0]
            first[1] += 1
            for t, p in zip(target[1:], predicted[1:]):
                later[0] += t == p
                later[1] += 1
    return {"first": first[0] / first[1] if first[1] else float("nan"), "later": later[0] / later[1] if later[1] else float("nan"),
            "first_n": first[1], "later_n": later[1]}  # fmt: skip


def blocks(path: Path, size: int) -> list[dict[str, Any]]:
    """One row per block of ``size`` measured cases, in edit order."""
    cases = [c for c in json.loads(path.read_text(encoding="utf-8"))["cases"] if c.get("status") == "measured"]
    rows = []
    for start in range(0, len(cases), size):
        part = cases[start : start + size]
        rows.append({"first_case": part[0]["index"], "last_case": part[-1]["index"], "cases": len(part),
                     **{m: token_accuracy(part, m) for m in METRICS}})  # fmt: skip
    rows.append({"first_case": "all", "last_case": "", "cases": len(cases), **{m: token_accuracy(cases, m) for m in METRICS}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--block", type=int, default=200, help="edits per block (in the order they were made)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    out = {}
    for path in args.results:
        rows = out[str(path)] = blocks(path, args.block)
        print(f"\n{path}\n")
        print("| cases | efficacy: first token | later tokens | generalization: first token | later tokens |")
        print("| :--- | ---: | ---: | ---: | ---: |")
        for r in rows:
            span = "all" if r["first_case"] == "all" else f"{r['first_case']}-{r['last_case']}"
            e, g = r["efficacy"], r["generalization"]
            print(f"| {span} ({r['cases']}) | {100 * e['first']:.1f} | {100 * e['later']:.1f} | {100 * g['first']:.1f} | {100 * g['later']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
