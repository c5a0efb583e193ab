"""The spread's cost alone (MEMIT's layer-by-layer write, no target search) for N edits,
with the reads in chunks of each given size; prints seconds, the gap left and peak RSS.

    .venv/bin/python bench/spread_speed.py --edits 1000 --chunks 256,100000

Targets are the current h_L plus seeded noise (the cost does not depend on them), so two
chunk sizes write the same thing and must leave the same gap. Edits as in memit_speed.py
(ZsRE 0-499, then known_1000 with counterfactual targets); the MEMIT preset; statistics
cached first. Each run's writes are rolled back before the next.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from memit_speed import ZSRE, known_facts_with_new_targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--chunks", default="256,100000", help="chunk_rows values, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import kedsl_memit
    from kedsl.editing.request import EditRequest
    from kedsl.model.journal import WeightJournal
    from kedsl.model.loading import load_model
    from kedsl.registry.presets import params_for
    from kedsl.registry import Registry
    from kedsl.toolkit.context import context_templates
    from kedsl.toolkit.multilayer import SpreadReader, least_squares_update, spread_update
    from kedsl.toolkit.stats import second_moment
    from kedsl_memit.memit import MEMITConfig

    records = [r for r in json.loads(ZSRE.read_text())[:500] if r["alt"].strip()]
    reqs = [EditRequest(subject=r["subject"], prompt=r["src"], target=r["alt"]) for r in records][: args.edits]
    if len(reqs) < args.edits:
        reqs += known_facts_with_new_targets(args.edits - len(reqs))
    model = load_model("smollm2-135m", {})
    spec = Registry(plugins=[kedsl_memit], entry_points=False).method("memit")
    cfg = MEMITConfig.from_params(params_for(spec, {}, model).params)
    templates = context_templates(model, cfg.context_lengths, cfg.context_count, cfg.seed)
    mom2 = {l: second_moment(model, l, cfg.stats_corpus, cfg.mom2_samples, cfg.seed) for l in cfg.layers}
    h = SpreadReader(model, reqs, cfg.layers, templates).read()
    g = torch.Generator().manual_seed(0)
    z = h + 0.5 * torch.randn(h.shape, generator=g) * h.norm(dim=0).mean() / h.shape[0] ** 0.5

    def solve(layer: int, keys: torch.Tensor, residuals: torch.Tensor) -> torch.Tensor:
        return least_squares_update(keys, residuals, mom2[layer], cfg.mom2_update_weight)

    for chunk in (int(c) for c in args.chunks.split(",")):
        journal = WeightJournal(model.model)
        t = time.perf_counter()
        info = spread_update(model, reqs, cfg.layers, templates, z, solve, journal, passes=cfg.spread_passes, chunk_rows=chunk)
        s = time.perf_counter() - t
        journal.rollback()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"chunk_rows={chunk}: spread {s:.1f} s for {len(reqs)} edits = {s / len(reqs):.3f} s/edit, "
              f"final gap {info['final_gap_norm']:.3f}, peak RSS so far {rss:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
