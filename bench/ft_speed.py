"""FT-L and FT-M speed against EasyEdit's on the same ZsRE records (0-19, tuning records)
and CPU: median seconds per edit (method only, as `kedsl bench` times it) and efficacy.

EasyEdit's medians on these 20 records and this machine type (measured side by side
before issue 20): FT-M 2.89 s, FT-L 2.60 s per edit. Run it alone (no other heavy process):

    .venv/bin/python bench/ft_speed.py                      # both methods, 2 threads
    .venv/bin/python bench/ft_speed.py --profile 3          # where one edit's time goes

--profile N applies N edits in-process under torch's profiler and prints the operators
that take the time (forward, backward, optimiser, tokenisation) instead of timing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ZSRE = REPO.parent / "shared" / "data" / "zsre_eval_head.json"
EASYEDIT_MEDIAN = {"ft_m": 2.89, "ft_l": 2.60}


def timed(method: str, args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp()) / f"{method}.json"
    cmd = [str(Path(sys.executable).with_name("kedsl")), "bench", str(ZSRE), "--method", method, "--split", "tune",
           "--limit", str(args.limit), "--metrics", "efficacy,generalization,locality", "--json", str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = json.loads(out.read_text())
    seconds = [c["seconds"] for c in record["cases"] if c["error"] is None and c["seconds"] is not None]
    return {"median": statistics.median(seconds), "mean": statistics.mean(seconds), **record["aggregate"]}


def profile(n: int, method: str) -> None:
    from torch.profiler import ProfilerActivity, profile as tprofile

    from kedsl.editing.outcome import EditContext
    from kedsl.editing.request import EditRequest
    from kedsl.model.journal import WeightJournal
    from kedsl.model.loading import load_model
    from kedsl.registry import get_registry
    from kedsl.registry.presets import params_for

    model = load_model("smollm2-135m", {})
    spec = get_registry().method(method)
    params = params_for(spec, {}, model).params
    impl = spec.load()
    records = [r for r in json.loads(ZSRE.read_text())[:n + 1] if r["alt"].strip()]
    for i, rec in enumerate(records):
        req = EditRequest(subject=rec["subject"], prompt=rec["src"], target=rec["alt"])
        ctx = EditContext(weights=WeightJournal(model.model), cache_dir=Path(tempfile.mkdtemp()), seed=0)
        if i == 0:  # warm-up, not profiled
            impl.apply(model, [req], params, ctx).undo(model)
            continue
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            outcome = impl.apply(model, [req], params, ctx)
        outcome.undo(model)
        print(f"--- {method}, record {i}: {outcome.info.get('steps')} steps, {outcome.info.get('seconds', 0):.2f}s")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="ft_m,ft_l")
    ap.add_argument("--limit", type=int, default=20, help="ZsRE records 0..limit-1 (tuning records)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="profile N edits instead of timing")
    args = ap.parse_args()
    for method in args.methods.split(","):
        if args.profile:
            profile(args.profile, method)
            continue
        r = timed(method, args)
        ref = EASYEDIT_MEDIAN.get(method)
        print(f"{method}: median {r['median']:.2f} s/edit (mean {r['mean']:.2f}; EasyEdit median {ref} s), "
              f"efficacy {r['efficacy']:.3f}, generalization {r['generalization']:.3f}, locality {r['locality']:.3f}, "
              f"{r['cases']} cases, ZsRE records 0-{args.limit - 1} (tuning records), {args.threads} threads")


if __name__ == "__main__":
    main()
