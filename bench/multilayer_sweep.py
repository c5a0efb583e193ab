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
    ap.add_argument("--search", action="append", default=None, metavar="NAME:K=V,K=V",
                    help="a target-search setting to compare (repeatable), e.g. 'wide:clamp_norm_factor=4,v_weight_decay=0.001'; "
                         "its targets are scored with every lambda and l2 (default: the preset only)")
    ap.add_argument("--spread", action="append", default=None, metavar="NAME:K=V,K=V",
                    help="settings of the spread over layers to compare on the same targets (repeatable): layers (ending at the "
                         "searched layer), mom2_samples; e.g. 'deep:layers=2..8,mom2_samples=65536'")
    ap.add_argument("--json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import kedsl_memit
    from kedsl.evaluation.runner import parse_param_args
    from kedsl.editing.request import EditRequest
    from kedsl.model.journal import WeightJournal
    from kedsl.records import jsonable
    from kedsl.model.loading import load_model
    from kedsl.registry.presets import params_for
    from kedsl.registry import Registry
    from kedsl.toolkit.scoring import teacher_forced
    from kedsl.toolkit.context import context_templates
    from kedsl.toolkit.multilayer import least_squares_update, search_targets, spread_update
    from kedsl.toolkit.optimize import ValueSearchConfig
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

    def parse_search(text: str) -> tuple[str, dict]:  # "name:k=v,k=v", typed by MEMIT's schema
        name, _, pairs = text.partition(":")
        return name, parse_param_args(spec, [p for p in pairs.split(",") if p])

    searches = [parse_search(x) for x in (args.search or ["preset:"])]
    spreads = [parse_search(x) for x in (args.spread or ["search:"])]

    def acc(pairs):
        return [sum(p == t for p, t in zip(s.predicted, s.target_ids)) / len(s.target_ids) for s in teacher_forced(model, pairs)]

    loc_pairs = [(r["loc"], r["loc_ans"]) for r in recs]
    loc_before = [s.predicted for s in teacher_forced(model, loc_pairs)]

    def score(name, cfg, templates, found, solve):
        journal = WeightJournal(model.model)
        t = time.perf_counter()
        info = spread_update(model, reqs, cfg.layers, templates, found.z, solve, journal, passes=cfg.spread_passes, raw_deltas=found.raw_deltas)
        seconds = time.perf_counter() - t
        eff = acc([(r["src"], r["alt"]) for r in recs])
        gen = acc([(r["rephrase"], r["alt"]) for r in recs])
        loc = [sum(x == y for x, y in zip(s.predicted, before)) / len(before) for s, before in zip(teacher_forced(model, loc_pairs), loc_before)]
        journal.rollback()
        row = {"setting": name, "efficacy": sum(eff) / len(eff), "generalization": sum(gen) / len(gen), "locality": sum(loc) / len(loc),
               "gap_closed": 1 - info["final_gap_norm"] / info["per_layer"][0]["gap_norm"], "spread_seconds": seconds}
        print(f"  {name:28s} efficacy {row['efficacy']:.3f}  generalization {row['generalization']:.3f}  locality {row['locality']:.3f}  gap closed {row['gap_closed']:.2f}  ({seconds:.0f}s)")
        return row

    rows = []
    for search_name, given in searches:
        cfg = MEMITConfig.from_params(params_for(spec, given, model).params)
        templates = context_templates(model, cfg.context_lengths, cfg.context_count, cfg.seed)
        t = time.perf_counter()
        found = search_targets(model, reqs, templates, cfg.layers[-1], ValueSearchConfig.from_method(cfg), cfg.v_batch)
        search_s = time.perf_counter() - t
        prob = sum(found.target_prob) / len(reqs)
        print(f"search {search_name} {given}: {len(templates)} templates, {len(reqs)} facts, {found.steps} steps, {search_s:.0f}s, mean target prob {prob:.3f}")
        for spread_name, spread_given in spreads:
            scfg = MEMITConfig.from_params(params_for(spec, {**given, **spread_given}, model).params)
            if scfg.layers[-1] != cfg.layers[-1]:
                raise SystemExit(f"spread {spread_name}: its last layer must be the searched layer {cfg.layers[-1]}")
            sacfg = AlphaEditConfig(layers=scfg.layers, null_space_threshold=args.threshold, mom2_samples=scfg.mom2_samples)
            print(f" spread {spread_name}: layers {scfg.layers}, mom2_samples {scfg.mom2_samples}")
            settings = [(f"memit lambda={lam:g}", lambda layer, k, r, lam=lam, c=scfg: least_squares_update(k, r, second_moment(model, layer, c.stats_corpus, c.mom2_samples, c.seed), lam))
                        for lam in (float(x) for x in filter(None, args.lambdas.split(",")))]
            settings += [(f"alphaedit l2={l2:g} thr={args.threshold:g}", lambda layer, k, r, l2=l2, c=sacfg: projected_update(k, r, projection_for(model, layer, c)[0], None, l2))
                         for l2 in (float(x) for x in filter(None, args.l2s.split(",")))]
            for name, solve in settings:
                row = score(name, scfg, templates, found, solve)
                rows.append({"search": search_name, "search_params": given, "spread": spread_name, "spread_params": spread_given,
                             "templates": len(templates), "search_seconds": search_s, "search_steps": found.steps, "target_prob": prob, **row})
    if args.json:
        Path(args.json).write_text(json.dumps(jsonable({"records": args.records, "facts": len(reqs), "threshold": args.threshold, "rows": rows}), indent=2))


if __name__ == "__main__":
    main()
