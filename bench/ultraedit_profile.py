"""Where one UltraEdit edit spends its time: a model's preset, one Eiffel Tower request,
applied once (statistics computed and cached) and then again under cProfile.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ultraedit_profile.py [--model qwen2.5-coder-0.5b] [--top 30]

Prints both applies' seconds and the profile's top functions by cumulative time.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from kedsl.model.journal import WeightJournal
from kedsl.model.loading import load_model
from kedsl.plugin import EditContext, EditRequest
from kedsl.registry import Registry
from kedsl.registry.params import resolve_params

import kedsl_ultraedit
from kedsl_ultraedit.config import PRESETS
from kedsl_ultraedit.ultraedit import UltraEdit

REQUEST = EditRequest(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of", target="Rome")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    model = load_model(args.model, {})
    preset = next((p.values for p in PRESETS if p.model == args.model), {})
    spec = Registry(plugins=[kedsl_ultraedit], entry_points=False).method("ultraedit")
    params = resolve_params(spec.params, dict(preset))

    def once() -> float:
        ctx = EditContext(weights=WeightJournal(model.model), cache_dir=Path(tempfile.gettempdir()), seed=0, state={})
        start = time.perf_counter()
        UltraEdit().apply(model, [REQUEST], params, ctx)
        seconds = time.perf_counter() - start
        ctx.weights.rollback()
        return seconds

    print(f"first apply (with the one-time statistics): {once():.2f} s")
    profile = cProfile.Profile()
    profile.enable()
    seconds = once()
    profile.disable()
    print(f"second apply: {seconds:.2f} s")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
