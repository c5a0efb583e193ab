"""MEMIT speed on SmolLM2-135M-Instruct: seconds for one batch of N edits (statistics
cached), seconds per edit against a single ROME edit, and peak memory; writes a PNG.

    .venv/bin/python bench/memit_speed.py --sizes 10,100 --rome-edits 3 \
        --png bench/results/memit_speed.png

Statistics are computed (and cached) before timing, so the numbers are the per-batch
cost a user pays once the cache is warm. Edits come from ZsRE records 0-499 (speed only,
no tuning) and, past those 498, from known_1000 with counterfactual targets (the held-out
ZsRE records stay unseen). Peak memory is the process's maximum RSS (ru_maxrss), which only grows: the
value printed after each size is the peak up to then.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
ZSRE = REPO.parent / "shared" / "data" / "zsre_eval_head.json"
KNOWN = REPO.parent / "shared" / "data" / "known_1000.json"


def known_facts_with_new_targets(n: int) -> list:
    """``n`` counterfactual edits from known_1000 (ROME's known facts): each prompt gets
    the answer of the next fact of the same relation with a different answer."""
    from kedsl.editing.request import EditRequest

    facts = json.loads(KNOWN.read_text())
    by_rel: dict[str, list[dict]] = {}
    for f in facts:
        by_rel.setdefault(f["relation_id"], []).append(f)
    out = []
    for f in facts:
        others = [g["attribute"] for g in by_rel[f["relation_id"]] if g["attribute"] != f["attribute"]]
        if others and f["subject"] in f["prompt"]:
            out.append(EditRequest(subject=f["subject"], prompt=f["prompt"], target=others[0].strip()))
        if len(out) == n:
            return out
    raise SystemExit(f"known_1000 gives only {len(out)} more edits; {n} were asked for")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plot(result: dict, png: str) -> None:
    """The per-edit curve with ROME's single edit and the issue's target (a third of it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, rome_s = result["memit"], result["rome_seconds"]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["edits"] for r in rows]
    ax.plot(xs, [r["per_edit"] for r in rows], "o-", label="MEMIT s/edit (one batch)")
    n_rome = result.get("rome_edits")
    ax.axhline(rome_s, color="gray", ls="--", label=f"ROME single edit {rome_s:.1f} s" + (f" (median of {n_rome})" if n_rome else ""))
    ax.axhline(rome_s / 3, color="gray", ls=":", label=f"target: a third of ROME's ({rome_s / 3:.1f} s)")
    for r in rows:
        # below the point: the target line sits just above the larger batches
        ax.annotate(f"{r['per_edit']:.2f} s/edit\n{r['seconds']:.0f} s total\npeak {r['peak_rss_mib'] / 1024:.1f} GiB",
                    (r["edits"], r["per_edit"]), textcoords="offset points", xytext=(4, -36), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 1.5, max(xs) * 3)
    ax.set_ylim(0, rome_s * 1.15)
    ax.set_xlabel("edits in one batch")
    ax.set_ylabel("seconds per edit")
    ax.set_title(f"MEMIT on SmolLM2-135M, {result['threads']} CPU thread(s), statistics cached", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    print(f"plot: {png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100", help="batch sizes, comma-separated")
    ap.add_argument("--rome-edits", type=int, default=3, help="single ROME edits to time (median)")
    ap.add_argument("--png", default=str(REPO / "bench" / "results" / "memit_speed.png"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--replot", metavar="JSON", help="only draw the PNG from an earlier run's --json")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), args.png)
        return
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import kedsl_memit
    import kedsl_rome
    from kedsl.editing.outcome import EditContext
    from kedsl.editing.request import EditRequest
    from kedsl.model.journal import WeightJournal
    from kedsl.model.loading import load_model
    from kedsl.registry.presets import params_for
    from kedsl.registry import Registry
    from kedsl.toolkit.stats import second_moment
    from kedsl_memit.memit import MEMIT, MEMITConfig
    from kedsl_rome.rome import ROME, configure

    sizes = [int(s) for s in args.sizes.split(",")]
    records = [r for r in json.loads(ZSRE.read_text())[:500] if r["alt"].strip()]
    requests = [EditRequest(subject=r["subject"], prompt=r["src"], target=r["alt"]) for r in records]
    if max(sizes) > len(requests):  # the held-out ZsRE records stay unseen: top up from known_1000
        requests += known_facts_with_new_targets(max(sizes) - len(requests))
    model = load_model("smollm2-135m", {})
    reg = Registry(plugins=[kedsl_memit, kedsl_rome], entry_points=False)

    def params(name: str) -> dict:
        return params_for(reg.method(name), {}, model).params

    mp, rp = params("memit"), params("rome")
    mcfg, rcfg = MEMITConfig.from_params(mp), configure(rp, model=model)
    for l in mcfg.layers:  # warm the statistics cache (one layer at a time)
        second_moment(model, l, mcfg.stats_corpus, mcfg.mom2_samples, mcfg.seed)
    second_moment(model, rcfg.layer, rcfg.stats_corpus, rcfg.mom2_samples, rcfg.seed)

    def run(method, reqs, p) -> tuple[float, float]:
        """(seconds of the whole edit, seconds of its target search)"""
        ctx = EditContext(weights=WeightJournal(model.model), cache_dir=Path("/tmp"), seed=0)
        t = time.perf_counter()
        out = method.apply(model, reqs, p, ctx)
        seconds = time.perf_counter() - t
        out.undo(model)
        return seconds, out.info.get("search_seconds", float("nan"))

    rome_s = statistics.median(run(ROME(), [requests[i]], rp)[0] for i in range(args.rome_edits))
    print(f"rome single edit (median of {args.rome_edits}): {rome_s:.1f} s; peak RSS {peak_rss_mib():.0f} MiB")
    rows = []
    for n in sizes:
        s, search = run(MEMIT(), requests[:n], mp)
        rows.append({"edits": n, "seconds": s, "search_seconds": search, "per_edit": s / n, "vs_rome": s / n / rome_s, "peak_rss_mib": peak_rss_mib()})
        print(f"memit {n:5d} edits: {s:7.1f} s (target search {search:.1f} s), {s / n:6.2f} s/edit = {s / n / rome_s:.2f} x rome; "
              f"peak RSS {peak_rss_mib():.0f} MiB")
    result = {"rome_seconds": rome_s, "rome_edits": args.rome_edits, "memit": rows, "memit_params": mp, "rome_params": rp, "threads": args.threads}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))

    plot(result, args.png)


if __name__ == "__main__":
    main()
