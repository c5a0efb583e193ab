"""Causal tracing speed on SmolLM2-135M-Instruct: one full trace (hidden, mlp and attn,
10 noise samples each) of "The Eiffel Tower is located in the city of".

    .venv/bin/python bench/trace_speed.py [--threads 2] [--exact]

Prints seconds per kind and in total (model load excluded), for bf16 autocast (the
`kedsl locate` default) or float32 (--exact).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--exact", action="store_true", help="float32 instead of bf16 autocast")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from kedsl.model.loading import load_model
    from kedsl.toolkit.tracing import causal_trace

    model = load_model("smollm2-135m", {})
    prompt, subject = "The Eiffel Tower is located in the city of", "Eiffel Tower"
    total = 0.0
    for kind in ("hidden", "mlp", "attn"):
        t = time.perf_counter()
        r = causal_trace(model, prompt, subject, kind=kind, samples=args.samples, bf16=not args.exact)
        s = time.perf_counter() - t
        total += s
        cells = sum(1 for row in r.scores[r.subject_tokens[0]:] for _ in row)
        print(f"{kind:6s} {s:6.1f}s  {cells} cells x {args.samples} samples; clean p={r.clean_prob:.3f} corrupted p={r.corrupted_prob:.3f}")
    print(f"full trace ({'float32' if args.exact else 'bf16'}, {args.threads} threads): {total:.1f}s (target < 60 s)")


if __name__ == "__main__":
    sys.exit(main())
