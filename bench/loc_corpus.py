"""A statistics corpus of the questions an edit should leave alone: the locality prompts
and answers of an editor-training file (SPLITS.json: a training file, never a held-out
one), one "question answer" per line, for UltraEdit's ``preserve`` (``stats_corpus=FILE``).

    .venv/bin/python bench/loc_corpus.py ../shared/data/train/zsre_mend_train_1k.json \
        --out loc_corpus.txt

UltraEdit's ridge then holds the outputs of question-like inputs in place, where the
default corpus (text sampled from the model) holds those of general prose: on ZsRE tuning
records this kept the efficacy of sequential turns at a higher locality (README, lifelong
editing).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("train", type=Path, help="a ZsRE-layout training file (records with `loc` and `loc_ans`)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    records = json.loads(args.train.read_text())
    lines = [f"{r['loc'].strip()} {r['loc_ans'].strip()}" for r in records if r.get("loc") and r.get("loc_ans")]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} lines -> {args.out}")


if __name__ == "__main__":
    main()
