"""Speed of the trained editors (MEND, SERAC) on SmolLM2-135M-Instruct:

    .venv/bin/python bench/trained_editors_speed.py --mend examples/editors/mend-smollm2 \\
        --serac examples/editors/serac-smollm2 [--edits 20] [--json out.json]

prints, per editor,
- training: steps, steps per second and the minutes to the reported (best) checkpoint,
  read from the editor's JSON (its curve records the training seconds at each validation);
- seconds per edit: the method's ``apply`` on held-out ZsRE records (``zsre_eval_head.json``
  500+), each edit undone before the next; the median and the worst, the first edit (which
  loads the editor) reported apart;
- SERAC's added inference cost per prompt: the model's forward pass over a prompt with the
  memory installed (scope decision + the counterfactual model's longer context when the
  prompt is in scope) minus the same pass without SERAC, for out-of-scope prompts (ZsRE's
  locality questions) and in-scope prompts (the edits' paraphrases), with 1 and with
  ``--pool`` facts in memory.

Run it alone on the machine: two heavy processes on two cores slow each other.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
ZSRE = REPO.parent / "shared" / "data" / "zsre_eval_head.json"


def training_numbers(editor_dir: Path) -> dict[str, Any]:
    config = json.loads((editor_dir / "editor.json").read_text())
    curve = config["curve"]
    best = next((c for c in curve if c["step"] == config["best_step"]), curve[-1])
    seconds = config["wall_seconds"]
    return {
        "steps": config["steps"], "wall_minutes": seconds / 60, "steps_per_second": config["steps"] / seconds if seconds else None,
        "best_step": config["best_step"], "best_score": config["best_score"], "minutes_to_best": best["seconds"] / 60,
        "stopped": config["stopped"],
    }  # fmt: skip


def time_edits(model: Any, method: str, editor_dir: Path, cases: list[Any]) -> dict[str, Any]:
    from kedsl.editing.outcome import EditContext
    from kedsl.model.journal import WeightJournal
    from kedsl.registry import get_registry
    from kedsl.registry.params import resolve_params

    spec = get_registry().method(method)
    impl = spec.load()
    params = resolve_params(spec.params, {"editor": str(editor_dir)})
    seconds = []
    for c in cases:
        context = EditContext(weights=WeightJournal(model.model), cache_dir=editor_dir, seed=0)
        start = time.perf_counter()
        outcome = impl.apply(model, [c.request], params, context)
        seconds.append(time.perf_counter() - start)
        outcome.undo(model)
    rest = seconds[1:] or seconds
    return {"first_s": seconds[0], "median_s": statistics.median(rest), "max_s": max(rest), "edits": len(seconds)}


def forward_seconds(model: Any, prompts: list[list[int]], repeat: int = 3) -> float:
    """Mean seconds per prompt of contextualising it and one forward pass (batch of one)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        with torch.no_grad():
            for ids in prompts:
                fed = model.contextualize(ids)
                model.model(input_ids=torch.tensor([fed], device=model.device))
        best = min(best, (time.perf_counter() - start) / len(prompts))
    return best


def serac_inference(model: Any, editor_dir: Path, cases: list[Any], pool: int) -> dict[str, Any]:
    from kedsl.editing.outcome import EditContext
    from kedsl.model.journal import WeightJournal
    from kedsl.registry import get_registry
    from kedsl.registry.params import resolve_params

    tok = model.tokenizer
    outside = [list(tok(p, add_special_tokens=True)["input_ids"]) for c in cases for p, _ in c.case.locality[:1]]
    inside = [list(tok(p, add_special_tokens=True)["input_ids"]) for c in cases[:1] for p, _ in (c.case.paraphrase or c.case.rewrite)[:1]]
    inside = inside * max(1, len(outside) // max(1, len(inside)))
    plain_out, plain_in = forward_seconds(model, outside), forward_seconds(model, inside)
    spec = get_registry().method("serac")
    impl = spec.load()
    params = resolve_params(spec.params, {"editor": str(editor_dir)})
    out: dict[str, Any] = {"plain_ms_per_prompt": 1000 * plain_out}
    applied = []
    for size in (1, pool):
        while len(applied) < size:
            c = cases[len(applied) % len(cases)]
            context = EditContext(weights=WeightJournal(model.model), cache_dir=editor_dir, seed=0)
            applied.append(impl.apply(model, [c.request], params, context))
        out[f"pool_{size}"] = {
            "out_of_scope_added_ms": 1000 * (forward_seconds(model, outside) - plain_out),
            "in_scope_added_ms": 1000 * (forward_seconds(model, inside) - plain_in),
        }
    for outcome in reversed(applied):
        outcome.undo(model)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mend", type=Path, default=None, help="a MEND editor folder trained for SmolLM2")
    ap.add_argument("--serac", type=Path, default=None, help="a SERAC editor folder trained for SmolLM2")
    ap.add_argument("--edits", type=int, default=20, help="held-out ZsRE edits to time")
    ap.add_argument("--pool", type=int, default=100, help="facts in SERAC's memory for the larger inference measurement")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()

    from kedsl.evaluation.datasets import read_cases, split_indices
    from kedsl.model.loading import load_model

    torch.manual_seed(0)
    cases = read_cases(ZSRE, indices=split_indices(ZSRE, "heldout"), limit=max(args.edits, args.pool)).cases
    model = load_model("smollm2-135m", {})
    results: dict[str, Any] = {"model": model.ref, "threads": torch.get_num_threads()}
    for method, folder in (("mend", args.mend), ("serac", args.serac)):
        if folder is None:
            continue
        row: dict[str, Any] = {"training": training_numbers(folder), "edit": time_edits(model, method, folder, cases[: args.edits])}
        if method == "serac":
            row["inference"] = serac_inference(model, folder, cases[: args.pool], args.pool)
        results[method] = row
        t, e = row["training"], row["edit"]
        print(f"{method}: training {t['steps']} steps in {t['wall_minutes']:.1f} min ({t['steps_per_second']:.2f} steps/s), "
              f"best at step {t['best_step']} after {t['minutes_to_best']:.1f} min (score {t['best_score']:.3f}, stopped: {t['stopped']})")  # fmt: skip
        print(f"{method}: seconds per edit over {e['edits']} held-out ZsRE edits: median {e['median_s']:.3f}, max {e['max_s']:.3f} "
              f"(first, loading the editor: {e['first_s']:.3f})")  # fmt: skip
        if "inference" in row:
            inf = row["inference"]
            print(f"serac: a plain forward pass is {inf['plain_ms_per_prompt']:.1f} ms per prompt; added by SERAC:")
            for key in (k for k in inf if k.startswith("pool_")):
                print(f"  {key.replace('pool_', '')} fact(s) in memory: out of scope +{inf[key]['out_of_scope_added_ms']:.1f} ms, "
                      f"in scope +{inf[key]['in_scope_added_ms']:.1f} ms")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
