"""Scale-out on one machine: ``kedsl bench`` and ``kedsl stats`` as one process and as N
ranks (``torchrun --nproc-per-node N``), on SmolLM2-135M-Instruct.

1. Benchmarks: held-out ZsRE records (default 500-519) with ROME (single mode) and MEMIT
   (batch mode, batches of 10, so each rank gets whole batches), every default metric.
   Each run is timed from start to exit (loading the model included). Three runs per
   method: N ranks; one process computing with as many threads as one rank (the same
   arithmetic: its aggregate and every case's values must equal the N ranks' to the last
   digit, and the edited weights bit for bit); one process with every core (what a user
   runs otherwise: CPU kernels split their sums by thread count, so its float rounding,
   and so an edit's last bits and rarely a generated token, may differ). The script
   says which cases differ, if any. The statistics the methods need are computed
   (cached) before any timing, so every run reads the same cache.
2. Statistics: one layer over 8,192 tokens of the model-sampled corpus, one process
   against N ranks, each in a fresh statistics folder holding the same sampled corpus;
   prints the maximum relative difference and checks the N-rank run wrote the file once.

Each rank gets its share of the cores (OMP_NUM_THREADS = cores // N), as ``torchrun``
gives one thread each on 2 cores.

    .venv/bin/python bench/distributed_speed.py --json bench/results/distributed_speed.json
    .venv/bin/python bench/distributed_speed.py --records 500:502 --stats-tokens 512  # a quick try
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ZSRE = REPO.parent / "shared" / "data" / "zsre_eval_head.json"
MODEL = "smollm2-135m"


def run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``cmd`` (output to ``log``); its wall time in seconds. A failed run stops the script."""
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit code {proc.returncode}; its output is in {log}")
    return seconds


def kedsl(ranks: int, args: list[str]) -> list[str]:
    """``python -m kedsl ARGS``, or the same under torchrun with ``ranks`` processes."""
    if ranks == 1:
        return [sys.executable, "-m", "kedsl", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "-m", "kedsl", *args]


def env_for(threads: int | None, stats_dir: Path | None = None) -> dict[str, str]:
    """The environment of a run computing with ``threads`` threads per process (None: torch's default, every core)."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if stats_dir is not None:
        env["KEDSL_STATS_DIR"] = str(stats_dir)
    return env


def warm_statistics(methods: list[tuple[str, dict[str, Any]]]) -> None:
    """Compute (once, cached) the statistics each method's resolved parameters ask for."""
    from kedsl.model.loading import load_model
    from kedsl.registry import get_registry
    from kedsl.registry.params import Range
    from kedsl.registry.presets import params_for
    from kedsl.toolkit.stats import second_moments

    registry = get_registry()
    model = load_model(MODEL, {}, registry)
    for method, given in methods:
        p = params_for(registry.method(method), given, model).params
        layers = p.get("layers", p.get("layer"))
        layers = layers.to_list() if isinstance(layers, Range) else [layers] if isinstance(layers, int) else list(layers)
        second_moments(model, layers, p["stats_corpus"], p["mom2_samples"], p.get("seed") or 0)


def compare(one: dict[str, Any], many: dict[str, Any]) -> dict[str, Any]:
    """Whether the aggregate and every case's values are the same (timings left out)."""
    drop = {"seconds_per_edit"}
    agg_one = {k: v for k, v in one["aggregate"].items() if k not in drop}
    agg_many = {k: v for k, v in many["aggregate"].items() if k not in drop}
    differing = [a["index"] for a, b in zip(one["cases"], many["cases"]) if (a["metrics"], a["n"], a["status"]) != (b["metrics"], b["n"], b["status"])]
    return {
        "aggregate_identical": agg_one == agg_many,
        "cases_identical": not differing and len(one["cases"]) == len(many["cases"]),
        "differing_cases": differing,
        "edits_digest_identical": one["config"]["edits_digest"] == many["config"]["edits_digest"],
    }


def bench_runs(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    first, _, last = args.records.partition(":")
    offset, limit = int(first), int(last) - int(first)
    runs = [("rome", "single", 1), ("memit", "batch", args.memit_batch)]
    print("statistics for the methods (cached before timing) ...", flush=True)
    warm_statistics([(m, {}) for m, _, _ in runs])
    per_rank = max(1, (os.cpu_count() or 1) // args.ranks)
    # (label, ranks, threads per process)
    setups = [(f"{args.ranks} ranks", args.ranks, per_rank), (f"1 process, {per_rank} thread(s)", 1, per_rank), ("1 process, every core", 1, None)]
    out = []
    for method, mode, batch in runs:
        common = ["bench", str(ZSRE), "--method", method, "--model", MODEL, "--offset", str(offset), "--limit", str(limit), "--mode", mode]
        common += ["--batch-size", str(batch)] if mode == "batch" else []
        walls, results = {}, {}
        for n, (label, ranks, threads) in enumerate(setups):
            path = work / f"{method}-{n}.json"
            walls[label] = run(kedsl(ranks, common + ["--json", str(path)]), env_for(threads), work / f"{method}-{n}.log")
            results[label] = json.loads(path.read_text())
            print(f"{method} ({mode}), {label}: {walls[label]:.1f} s", flush=True)
        distributed, same_threads, all_cores = (setup[0] for setup in setups)
        row = {"method": method, "mode": mode, "batch_size": batch, "records": args.records, "wall_seconds": walls,
               "speedup_over_same_threads": walls[same_threads] / walls[distributed], "speedup_over_every_core": walls[all_cores] / walls[distributed],
               "against_same_threads": compare(results[same_threads], results[distributed]),
               "against_every_core": compare(results[all_cores], results[distributed]),
               "aggregate": {k: v for k, v in results[distributed]["aggregate"].items() if k not in ("n", "per_key")}}  # fmt: skip
        for against in ("same_threads", "every_core"):
            same = row[f"against_{against}"]
            print(f"{method}: {distributed} against {same_threads if against == 'same_threads' else all_cores}: speed-up "
                  f"{row[f'speedup_over_{against}']:.2f}x; aggregate identical: {same['aggregate_identical']}; every case identical: "
                  f"{same['cases_identical']} (differing: {same['differing_cases']}); edited weights bit-identical: {same['edits_digest_identical']}",
                  flush=True)  # fmt: skip
        out.append(row)
    return out


def stats_run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    layer, tokens = str(args.stats_layer), str(args.stats_tokens)
    cmd = ["stats", "--model", MODEL, "--layers", layer, "--samples", tokens]
    sampled = work / "stats-corpus"
    print("sampling the statistics corpus (once, not timed) ...", flush=True)
    run(kedsl(1, cmd), env_for(None, sampled), work / "stats-corpus.log")
    corpus = [p for p in sampled.iterdir() if p.suffix == ".jsonl"]
    walls, files = {}, {}
    for ranks in (1, args.ranks):
        folder = work / f"stats-{ranks}"
        folder.mkdir()
        for p in corpus:
            shutil.copy(p, folder / p.name)
        log = work / f"stats-{ranks}.log"
        threads = max(1, (os.cpu_count() or 1) // ranks) if ranks > 1 else None
        walls[ranks] = run(kedsl(ranks, ["-v", *cmd]), env_for(threads, folder), log)
        files[ranks] = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")
        writes = sum("statistics written to" in line for line in log.read_text().splitlines())
        if len(files[ranks]) != 1 or writes != 1:
            sys.exit(f"{ranks} rank(s): {len(files[ranks])} statistics files, {writes} writes (expected 1 and 1); see {log}")
        print(f"statistics on {ranks} rank(s): {walls[ranks]:.1f} s", flush=True)
    if files[1][0].name != files[args.ranks][0].name:
        sys.exit(f"the cache keys differ: {files[1][0].name} and {files[args.ranks][0].name}")
    a, b = (load_file(str(files[r][0]))["mom2"].double() for r in (1, args.ranks))
    scale = a.abs().max()
    big = a.abs() > 1e-3 * scale  # relative differences of entries near zero say nothing
    row = {"layer": args.stats_layer, "tokens": args.stats_tokens, "wall_seconds": walls, "speedup": walls[1] / walls[args.ranks],
           "max_abs_diff_over_max_abs": float((a - b).abs().max() / scale), "frobenius_rel_diff": float((a - b).norm() / a.norm()),
           "max_elementwise_rel_diff": float(((a - b).abs()[big] / a.abs()[big]).max()), "written_once": True,
           "cache_key": files[1][0].name, "identical": bool(torch.equal(a, b))}  # fmt: skip
    print(f"statistics: max |C1 - C{args.ranks}| / max |C1| = {row['max_abs_diff_over_max_abs']:.2e}, ||C1 - C{args.ranks}|| / ||C1|| = "
          f"{row['frobenius_rel_diff']:.2e}, max relative difference of the entries above 1e-3 max |C1|: {row['max_elementwise_rel_diff']:.2e}; "
          "written once under the same key", flush=True)  # fmt: skip
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2, help="ranks of the distributed runs")
    ap.add_argument("--records", default="500:520", help="ZsRE records FIRST:END (held-out: 500 on)")
    ap.add_argument("--memit-batch", type=int, default=10, help="MEMIT's batch size (whole batches go to a rank)")
    ap.add_argument("--stats-layer", type=int, default=6)
    ap.add_argument("--stats-tokens", type=int, default=8192)
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--skip-stats", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kedsl-distributed-") as tmp:
        work = Path(tmp)
        report = {"cores": os.cpu_count(), "ranks": args.ranks,
                  "bench": [] if args.skip_bench else bench_runs(args, work),
                  "statistics": None if args.skip_stats else stats_run(args, work)}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
