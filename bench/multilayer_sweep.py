"""Sweep the per-layer rule of MEMIT (lambda) and AlphaEdit (l2, threshold) on fixed targets.

The target search is the expensive part and does not depend on these settings, so it runs
once for the batch; each setting then spreads the same targets over the layers, is
scored (teacher-forced token accuracy as in metrics.md: efficacy on the edit prompt,
generalization on the rephrase, locality = share of the loc answer's predicted tokens
unchanged), and is undone. Tuning split only (ZsRE records 0-499).

    .venv/bin/python bench/multilayer_sweep.py --records 0:10 --lambdas 15000,1000,100,10,1 \
        --l2s 10,1,0.1 --json bench/results/multilayer_sweep_0-9.json
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
ZSRE = REPO.parent / "shared" / "data" / "zsre_eval_head.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", default="0:10")
    ap.add_argument("--lambdas", default="15000,1000,100,10,1")
    ap.add_argument("--l2s", default="10,1,0.1")
    ap.add_argument("--threshold", type=float, default=1e-2)
    ap.add_argument("--json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import kedsl_memit
    from kedsl.editing import EditRequest, WeightJournal
    from kedsl.model.loading import load_model
    from kedsl.params import resolve_params
    from kedsl.registry import Registry
    from kedsl.scoring import teacher_forced
    from kedsl.toolkit.context import context_templates
    from kedsl.toolkit.multilayer import least_squares_update, search_targets, spread_update
    from kedsl.toolkit.stats import second_moment
    from kedsl_alphaedit.alphaedit import AlphaEditConfig, projected_update, projection_for
    from kedsl_memit.memit import MEMITConfig

    a, b = (int(x) for x in args.records.split(":"))
    if b > 500:
        raise SystemExit("tuning split only: records 0-499")
    recs = [r for r in json.loads(ZSRE.read_text())[a:b] if r["alt"].strip()]
    reqs = [EditRequest(subject=r["subject"], prompt=r["src"], target=r["alt"]) for r in recs]
    model = load_model("smollm2-135m", {})
    spec = Registry(plugins=[kedsl_memit], entry_points=False).method("memit")
    cfg = MEMITConfig.from_params(resolve_params(spec.params, {}, spec.presets, model.arch.preset_family))
    acfg = AlphaEditConfig(layers=cfg.layers, null_space_threshold=args.threshold)
    templates = context_templates(model, cfg.context_lengths, cfg.context_count, cfg.seed)

    def acc(pairs):
        return [sum(p == t for p, t in zip(s.predicted, s.target_ids)) / len(s.target_ids) for s in teacher_forced(model, pairs)]

    loc_pairs = [(r["loc"], r["loc_ans"]) for r in recs]
    loc_before = [s.predicted for s in teacher_forced(model, loc_pairs)]
    t = time.perf_counter()
    found = search_targets(model, reqs, templates, cfg.layers[-1], cfg.value_search(), cfg.v_batch)
    search_s = time.perf_counter() - t
    print(f"target search: {len(reqs)} facts, {search_s:.0f}s, mean target prob {sum(found.target_prob) / len(reqs):.3f}")

    def score(name, solve):
        journal = WeightJournal(model.model)
        t = time.perf_counter()
        info = spread_update(model, reqs, cfg.layers, templates, found.z, solve, journal)
        seconds = time.perf_counter() - t
        eff = acc([(r["src"], r["alt"]) for r in recs])
        gen = acc([(r["rephrase"], r["alt"]) for r in recs])
        loc = [sum(x == y for x, y in zip(s.predicted, before)) / len(before) for s, before in zip(teacher_forced(model, loc_pairs), loc_before)]
        journal.rollback()
        row = {"setting": name, "efficacy": sum(eff) / len(eff), "generalization": sum(gen) / len(gen), "locality": sum(loc) / len(loc),
               "gap_closed": 1 - info["final_gap_norm"] / info["per_layer"][0]["gap_norm"], "spread_seconds": seconds}
        print(f"{name:28s} efficacy {row['efficacy']:.3f}  generalization {row['generalization']:.3f}  locality {row['locality']:.3f}  gap closed {row['gap_closed']:.2f}  ({seconds:.0f}s)")
        return row

    rows = []
    for lam in (float(x) for x in args.lambdas.split(",")):
        rows.append(score(f"memit lambda={lam:g}", lambda layer, k, r, lam=lam: least_squares_update(k, r, second_moment(model, layer, cfg.stats_corpus, cfg.mom2_samples, cfg.seed), lam)))
    for l2 in (float(x) for x in args.l2s.split(",")):
        rows.append(score(f"alphaedit l2={l2:g} thr={args.threshold:g}", lambda layer, k, r, l2=l2: projected_update(k, r, projection_for(model, layer, acfg)[0], None, l2)))
    if args.json:
        Path(args.json).write_text(json.dumps({"records": args.records, "facts": len(reqs), "search_seconds": search_s, "layers": cfg.layers, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
