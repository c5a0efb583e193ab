"""What WISE's router does after a sequence of edits: from a `kedsl bench --mode sequential
--checkpoint-dir` checkpoint of a `wise` run, the side memory's threshold and the activation
scores (``|a Δᵀ| / |o|``) at the answer positions of the edits' own prompts, their
paraphrases and their locality prompts, with the share of positions routed to the side
memory.

    .venv/bin/python bench/wise_router.py CHECKPOINT_DIR [--data ../shared/data/zsre_eval_head.json]
        [--offset 500] [--limit 1000] [--json OUT]

The records must be the ones the run edited (ZsRE layout: src, rephrase, alt, loc, loc_ans).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kedsl.evaluation.sequential import LATEST, load_checkpoint
from kedsl.model.loading import load_model
from kedsl.registry.loader import get_registry
from kedsl.toolkit.gradients import encode_answers
from kedsl_wise.memory import side_memory
from kedsl_wise.wise import module_io, scores

ROOT = Path(__file__).resolve().parent.parent
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def answer_scores(model, path: str, delta: torch.Tensor, pairs: list[tuple[str, str]], batch: int = 32) -> list[list[float]]:
    """Per pair, the activation score at each position that predicts an answer token."""
    out = []
    for i in range(0, len(pairs), batch):
        answers = encode_answers(model, pairs[i : i + batch])
        x, o = module_io(model, path, {"input_ids": answers.ids, "attention_mask": answers.mask})
        s = scores(x, o.norm(dim=-1), delta)
        at = answers.predicting()
        out += [s[r][at[r]].tolist() for r in range(len(answers.ids))]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint_dir", type=Path)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "zsre_eval_head.json")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--offset", type=int, default=500)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    registry = get_registry()
    model = load_model(args.model, registry=registry)
    folder = args.checkpoint_dir / json.loads((args.checkpoint_dir / LATEST).read_text())["folder"]
    progress = json.loads((folder / "progress.json").read_text())
    load_checkpoint(args.checkpoint_dir, progress["key"], model, "wise", registry)
    layers = sorted({a.layer for a in model.attachments if a.kind == "wise_memory"})
    if len(layers) != 1:
        raise SystemExit(f"expected WISE memories at one layer, found {layers}")
    path = model.mlp_out_weight_name(layers[0]).rsplit(".", 1)[0]
    memory = side_memory(model.module(path))
    delta, threshold = memory.delta(), memory.threshold()
    records = [r for r in json.loads(args.data.read_text())[args.offset : args.offset + args.limit] if r.get("alt")]
    print(f"layer {layers[0]}: {len(memory)} edits, threshold {threshold:.3f}, lowest edit score {memory.lowest_score():.3f}")
    summary: dict = {"layer": layers[0], "edits": len(memory), "threshold": threshold, "prompts": {}}
    for name, pairs in (("edit", [(r["src"], r["alt"]) for r in records]), ("paraphrase", [(r["rephrase"], r["alt"]) for r in records]),
                        ("locality", [(r["loc"], r["loc_ans"]) for r in records])):  # fmt: skip
        rows = answer_scores(model, path, delta, pairs)
        flat = torch.tensor([v for row in rows for v in row])
        q = [float(v) for v in torch.quantile(flat, torch.tensor(QUANTILES))]
        routed = float((flat > threshold).float().mean())
        every = sum(min(row) > threshold for row in rows) / len(rows)
        summary["prompts"][name] = {"positions": len(flat), "routed": routed, "prompts_wholly_routed": every, "quantiles": dict(zip(map(str, QUANTILES), q))}
        print(f"{name:>10}: {routed:.1%} of {len(flat)} answer positions routed ({every:.1%} of prompts wholly); "
              "scores at 10/25/50/75/90%: " + " / ".join(f"{v:.3f}" for v in q))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
