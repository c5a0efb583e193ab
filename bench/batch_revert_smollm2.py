"""Acceptance of batch-member revert on SmolLM2-135M: for MEMIT and AlphaEdit, apply a
batch of three edits, revert the middle one (`kedsl revert` recomputes the batch without
it), apply the same script without that edit from scratch, and compare fingerprints.

    .venv/bin/python bench/batch_revert_smollm2.py [--methods memit,alphaedit] \
        [--json-out bench/results/batch_revert_smollm2.json]

Each method's presets for smollm2-135m apply. Prints, per method, the fingerprints of the
full batch, the reverted model and the fresh run without the edit, and whether the last
two are equal (they must be, bit for bit, on one machine). Exit status 1 if any differ.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

FACTS = [
    ("The Eiffel Tower is located in", "Eiffel Tower", "Rome"),
    ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English"),
    ("Toyota's headquarters are in", "Toyota", "Paris"),
]


def batch_script(model: str, method: str, facts: list[tuple[str, str, str]]) -> str:
    body = "".join(f'  edit prompt "{p}" subject "{s}" -> "{t}";\n' for p, s, t in facts)
    return f'model "{model}";\nbatch using {method} {{\n{body}}}\n'


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="memit,alphaedit")
    ap.add_argument("--member", type=int, default=1, help="index of the batch member to revert")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    from kedsl import api
    from kedsl.api.history import revert
    from kedsl.provenance.store import Store

    results = []
    with tempfile.TemporaryDirectory(prefix="kedsl-batch-revert-") as tmp:
        root = Path(tmp)
        for method in args.methods.split(","):
            d = root / method
            d.mkdir()
            (d / "full.ke").write_text(batch_script(args.model, method, FACTS))
            (d / "without.ke").write_text(batch_script(args.model, method, [f for i, f in enumerate(FACTS) if i != args.member]))
            t = time.perf_counter()
            full = api.apply(d / "full.ke", db=d / "k.db", out=d / "full", argv=["bench"])
            t_full = time.perf_counter() - t
            member = full.edits[args.member]
            t = time.perf_counter()
            with Store.open(d / "k.db") as store:
                rev = revert(store, member.edit_id, d / "full", d / "reverted", argv=["bench"])
            t_revert = time.perf_counter() - t
            t = time.perf_counter()
            fresh = api.apply(d / "without.ke", db=d / "fresh.db", out=d / "fresh", argv=["bench"])
            t_fresh = time.perf_counter() - t
            row = {
                "method": method, "reverted_edit": member.edit_id, "reverted_subject": member.request.subject,
                "statuses": [r.status for r in full.edits],
                "fingerprint_full": full.fingerprint_after, "fingerprint_reverted": rev["fingerprint_after"],
                "fingerprint_fresh_without": fresh.fingerprint_after,
                "equal": rev["fingerprint_after"] == fresh.fingerprint_after,
                "seconds": {"apply_full": round(t_full, 1), "revert_recompute": round(t_revert, 1), "apply_without": round(t_fresh, 1)},
            }  # fmt: skip
            results.append(row)
            print(f"{method}: revert {member.request.subject!r} ({member.edit_id})")
            print(f"  full batch             {full.fingerprint_after}")
            print(f"  reverted (recomputed)  {rev['fingerprint_after']}")
            print(f"  fresh run without it   {fresh.fingerprint_after}")
            print(f"  {'EQUAL' if row['equal'] else 'DIFFERENT'}; seconds: {row['seconds']}", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"model": args.model, "results": results}, indent=2) + "\n")
    sys.exit(0 if all(r["equal"] for r in results) else 1)


if __name__ == "__main__":
    main()
