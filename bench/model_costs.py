"""What each real model costs before and during editing: the one-time conversion, the
layer statistics its presets need, the sweeps that chose its presets, then seconds per
edit and peak RSS per method (from bench/models_table.py's cells).

    .venv/bin/python bench/model_costs.py                       # measure and print
    .venv/bin/python bench/model_costs.py --skip-measure        # only the recorded parts

Conversion and statistics are measured in a throw-away cache (`KEDSL_CACHE_DIR` set to a
temporary folder whose `wheels/` links to the real cache's, so no download happens), each
in its own process, so the cached copies in the user cache are neither used nor touched.
Run it alone: two heavy processes on two cores distort each other's times.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")

# one process per measurement: prints a JSON line
_CHILD = r"""
import json, sys, time, resource
from kedsl.model.loading import load_model
from kedsl.registry import get_registry
from kedsl.registry.presets import params_for
from kedsl.toolkit.stats import second_moments
alias, what = sys.argv[1], sys.argv[2]
t = time.perf_counter()
model = load_model(alias)
out = {"load_seconds": time.perf_counter() - t}
if what == "stats":
    reg = get_registry()
    layers = set()
    for method, key in (("rome", "layer"), ("memit", "layers"), ("alphaedit", "layers")):
        p = params_for(reg.method(method), {}, model).params
        layers.update([p[key]] if isinstance(p[key], int) else p[key])
        corpus, samples = p["stats_corpus"], p["mom2_samples"]
    t = time.perf_counter()
    second_moments(model, sorted(layers), corpus, samples, 0)
    out.update(stats_seconds=time.perf_counter() - t, stats_layers=sorted(layers), stats_samples=samples)
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def child(alias: str, what: str, env: dict[str, str]) -> dict:
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _CHILD, alias, what], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{alias} {what} failed:\n{res.stderr[-2000:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]), wall_seconds=time.perf_counter() - start)


def measure(alias: str, threads: int) -> dict:
    from kedsl.cache import cache_root

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "wheels").symlink_to(cache_root() / "wheels")
        env = dict(os.environ, KEDSL_CACHE_DIR=tmp, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env.pop("KEDSL_STATS_DIR", None)
        first = child(alias, "load", env)  # join + check + convert + load
        stats = child(alias, "stats", env)  # cached load + the presets' statistics
    return {"first_load_seconds": first["load_seconds"], "cached_load_seconds": stats["load_seconds"],
            "stats_seconds": stats["stats_seconds"], "stats_layers": stats["stats_layers"],
            "stats_samples": stats["stats_samples"], "peak_rss_mb": max(first["peak_rss_mb"], stats["peak_rss_mb"])}  # fmt: skip


def preset_cost(alias: str, presets: Path) -> tuple[float, int]:
    """Seconds of editing the preset sweeps spent on this model (cases x s/edit; loading and
    scoring not counted) and the number of settings tried."""
    aggregates = [json.loads(p.read_text())["aggregate"] for p in (presets / alias).glob("*/*.json")]
    return sum(a["seconds_per_edit"] * a["cases"] for a in aggregates), len(aggregates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-measure", action="store_true", help="only what earlier runs recorded")
    ap.add_argument("--presets", type=Path, default=REPO / "bench/results/presets")
    ap.add_argument("--cells", type=Path, default=REPO / "bench/results/models")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/models/costs.json")
    args = ap.parse_args()
    recorded = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for alias in args.models.split(","):
        if not args.skip_measure:
            recorded[alias] = dict(measure(alias, args.threads), threads=args.threads, measured=time.strftime("%Y-%m-%d"))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(recorded, indent=1) + "\n")
        m = recorded.get(alias)
        secs, n = preset_cost(alias, args.presets)
        print(f"\n## {alias}")
        if m:
            print(f"conversion (first load: join, check, convert, load): {m['first_load_seconds']:.0f} s; cached load {m['cached_load_seconds']:.1f} s")
            print(f"statistics for the presets' layers {m['stats_layers']} ({m['stats_samples']} tokens each): {m['stats_seconds']:.0f} s; peak RSS {m['peak_rss_mb']:.0f} MB ({m['threads']} threads)")
        print(f"preset sweeps: {n} settings, {secs / 60:.0f} min of editing (bench/results/presets/{alias})" if n else "preset sweeps: none (the presets are SmolLM2's own, measured before bench/preset_sweep.py)")
        cells = sorted((args.cells / alias).glob("*.json"))
        if cells:
            print("| method | s/edit | peak RSS (MB) |\n| :--- | ---: | ---: |")
            for p in cells:
                r = json.loads(p.read_text())
                print(f"| {p.stem} | {r['aggregate']['seconds_per_edit']:.2f} | {r['process']['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
