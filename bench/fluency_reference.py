"""What the design's `fluency` gives a perfect edit, measured on the unedited model.

`fluency` (metrics.md) is the n-gram entropy of the greedy continuation of the edit
prompt. An edit changes that continuation by design: it should now start with the new
target. This script asks the unedited model for three continuations of each edit prompt
(100 new tokens each, texts built as the metric builds them: prompt + continuation):

- `pre`: its own greedy continuation (the `pre_fluency` of `kedsl bench`);
- `forced_new`: the continuation forced to begin with the new target, then greedy: what
  an edit that changed the answer and nothing else in the model would generate;
- `forced_old`: the same forced to begin with the true (old) answer, as a control.

With `--compare` it prints, for the same records, the edited models' `fluency` from
`kedsl bench --json` files beside these references.

    .venv/bin/python bench/fluency_reference.py --offset 500 --limit 100 \\
        --compare bench/results/alphaedit_smollm2_zsre_500-599_sequential.json \\
        --json bench/results/fluency_reference_zsre_500-599.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
ZSRE = REPO.parent / "shared" / "data" / "zsre_eval_head.json"


def forced_fluencies(model, prompts: list[str], answers: list[str | None], new_tokens: int) -> list[float | None]:
    """Fluency ×100 of each prompt + its answer + the greedy continuation after that,
    ``new_tokens`` generated in all (the answer's tokens count among them). Batched:
    greedy decoding is prefix-consistent, so one run to the largest budget, cut per row,
    equals a run per row."""
    from kedsl.toolkit.scoring import greedy_ids
    from kedsl.toolkit.tokens import encode_pair, join
    from kedsl_metrics.measures import text_fluency

    tok = model.tokenizer
    todo = [i for i, a in enumerate(answers) if a and a.strip()]
    encs = [encode_pair(tok, prompts[i], answers[i]) for i in todo]
    budgets = [max(new_tokens - len(e.target_ids), 0) for e in encs]
    conts = greedy_ids(model, [e.input_ids for e in encs], max(budgets, default=0))
    out: list[float | None] = [None] * len(prompts)
    for i, c, b in zip(todo, conts, budgets):
        text = join(prompts[i], answers[i])[0] + tok.decode(c[:b], skip_special_tokens=True)
        out[i] = 100.0 * text_fluency(text)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ZSRE))
    ap.add_argument("--offset", type=int, default=500)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compare", nargs="*", default=[], help="kedsl bench --json files of edited runs")
    ap.add_argument("--json", help="write per-record values and means here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from kedsl.evaluation.datasets import load_cases
    from kedsl.model.loading import load_model
    from kedsl_metrics.measures import FLUENCY_NEW_TOKENS, Fluency

    cases = load_cases(args.data, limit=args.limit, offset=args.offset)
    model = load_model(args.model)
    t0 = time.perf_counter()
    prompts = [bc.case.rewrite[0][0] for bc in cases]  # the metric's prompt for ZsRE: the edit prompt
    # `pre` is the metric's own baseline; the forced texts are built the same way
    values = {"pre": Fluency().baseline(model, [bc.case for bc in cases])}
    print(f"  pre: {len(prompts)} continuations, {time.perf_counter() - t0:.0f} s", flush=True)
    for key, answers in (("forced_new", [bc.case.target for bc in cases]),
                         ("forced_old", [bc.case.old for bc in cases])):
        values[key] = forced_fluencies(model, prompts, answers, FLUENCY_NEW_TOKENS)
        print(f"  {key}: {len(prompts)} continuations, {time.perf_counter() - t0:.0f} s", flush=True)
    rows = [{"index": bc.index, **{k: v[n] for k, v in values.items()}} for n, bc in enumerate(cases)]

    def mean(key: str, keep: set[int] | None = None) -> float:
        vals = [r[key] for r in rows if r[key] is not None and (keep is None or r["index"] in keep)]
        return statistics.fmean(vals)

    pre = mean("pre")
    print(f"\nunedited model, ZsRE {args.offset}-{args.offset + len(rows) - 1} ({len(rows)} edit prompts), fluency x100:")
    for key, what in (("pre", "its own continuation (pre_fluency)"),
                      ("forced_new", "forced to start with the new target"),
                      ("forced_old", "forced to start with the old answer")):
        v = mean(key)
        print(f"  {what:<42} {v:7.1f}  ({100 * (v / pre - 1):+.1f}% on pre)")
    compared = []
    for path in args.compare:
        run = json.loads(Path(path).read_text())
        edited = {c["index"]: c["metrics"].get("fluency") for c in run["cases"]}
        keep = {i for i, v in edited.items() if v is not None} & {r["index"] for r in rows}
        ed = statistics.fmean(edited[i] for i in keep)
        cfg = run["config"]
        label = f"{cfg['method']} {cfg['mode']}"
        ref_new, ref_pre = mean("forced_new", keep), mean("pre", keep)
        # the run's own pre-edit values must be ours: the same model, prompts and decoding
        run_pre = {c["index"]: c["metrics"].get("pre_fluency") for c in run["cases"]}
        ours = {r["index"]: r["pre"] for r in rows}
        gap = max((abs(run_pre[i] - ours[i]) for i in keep if run_pre.get(i) is not None), default=float("nan"))
        print(f"  ({path}: largest gap to the run's own pre_fluency {gap:.3g})")
        print(f"  edited: {label:<34} {ed:7.1f}  ({100 * (ed / ref_pre - 1):+.1f}% on pre, "
              f"{100 * (ed / ref_new - 1):+.1f}% on forced_new; {len(keep)} records)")
        compared.append({"file": path, "label": label, "records": len(keep), "edited_fluency": ed,
                         "pre": ref_pre, "forced_new": ref_new})
    if args.json:
        Path(args.json).write_text(json.dumps({
            "config": {"data": args.data, "offset": args.offset, "limit": args.limit, "model": args.model,
                       "new_tokens": FLUENCY_NEW_TOKENS},
            "means": {k: mean(k) for k in ("pre", "forced_new", "forced_old")},
            "compared": compared,
            "records": rows,
        }, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
