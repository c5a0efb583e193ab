"""ROME layer sweep on SmolLM2-135M-Instruct over ZsRE records (tuning records only, 0-499).

Statistics for all swept layers are computed in one pass over the corpus first; then each
layer edits every record (applied to the unedited model, scored, undone) and the table
prints layer x (efficacy, generalization, locality, median seconds per edit).

    .venv/bin/python bench/rome_layer_sweep.py --layers 2,4,6,8,10,14 --records 0:200 --json out.json

``--json`` writes every record's row per layer (so any sub-range can be summarised
later) and is rewritten after each layer, so an interrupted sweep keeps what it did.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rome_speed import evaluate, load_smollm2, parse_sets, rome_params, summarize, zsre_records  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="2,4,6,8,10,14")
    ap.add_argument("--records", default="0:200", help="ZsRE record range a:b (b <= 500)")
    ap.add_argument("--set", action="append", default=[], help="ROME parameter k=v (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write per-record rows per layer to this file")
    ap.add_argument("-v", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.v else logging.WARNING, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")]

    model = load_smollm2()
    base = rome_params(model, parse_sets(args.set))
    records = zsre_records(args.records)

    from kedsl.toolkit.stats import second_moments

    t = time.perf_counter()
    if base["mom2_update_weight"] > 0:
        second_moments(model, layers, base["stats_corpus"], base["mom2_samples"], base["seed"] or 0)
    print(f"statistics for layers {layers}: {time.perf_counter() - t:.1f}s (one pass; 0 if cached)")

    print(f"records {args.records} (n={len(records)}), params {parse_sets(args.set) or 'preset'}")
    print("| layer | efficacy | generalization | locality | median s/edit |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    results: dict[str, object] = {"records": args.records, "params": base, "layers": {}}
    for layer in layers:
        params = dict(base, layer=layer)
        rows = evaluate(model, records, params)
        s = summarize(rows)
        print(f"| {layer} | {s['efficacy']:.3f} | {s['generalization']:.3f} | {s['locality']:.3f} | {s['median_seconds']:.1f} |", flush=True)
        if args.json:
            results["layers"][str(layer)] = {"summary": s, "rows": rows}  # type: ignore[index]
            Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
