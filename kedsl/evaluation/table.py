"""The benchmark's table: the KnowEdit paper's columns (and ours) with their labels, and
the paper-style rendering of a :class:`~kedsl.evaluation.runner.BenchResult`."""
from __future__ import annotations

from typing import Any

PRE_EFFICACY = "pre_efficacy"
PRE_FLUENCY = "pre_fluency"
#: The paper's columns plus ours, in table order (metric names as in design/metrics.md).
DEFAULT_METRICS = ("efficacy", "generalization", "portability", "locality", "fluency", "efficacy_gen", PRE_EFFICACY)
COUNTERFACT_METRICS = ("es", "ps", "ns")
#: The metrics each benchmark format reports by default, in table order (KnowEdit's per
#: dataset: Edit Succ. is teacher-forced; the generation-based reading stands beside it).
FORMAT_METRICS = {
    "zsre": DEFAULT_METRICS,
    "knowedit": DEFAULT_METRICS,
    "counterfact": (*DEFAULT_METRICS, *COUNTERFACT_METRICS),
    "counterfact_easyedit": DEFAULT_METRICS,
    "wikibio": ("efficacy", "longform_f1", "locality", "fluency", PRE_EFFICACY),
    "convsent": ("sentiment", "efficacy", "locality", "fluency", PRE_EFFICACY),
    "sanitation": ("efficacy", "efficacy_gen", "erased", "locality", "fluency", PRE_EFFICACY),
}
LABELS = {
    "efficacy": "Edit Succ.",
    "generalization": "Generalization",
    "portability": "Portability",
    "locality": "Locality",
    "fluency": "Fluency",
    "efficacy_gen": "Efficacy (gen)",
    PRE_EFFICACY: "Pre-edit Succ.",
    PRE_FLUENCY: "Pre-edit Fluency",
    "fluency_unrelated": "Fluency (unrelated)",
    "pre_fluency_unrelated": "Pre-edit Fluency (unrelated)",
    "erased": "Erased",
    "longform_f1": "Long-form F1",
    "sentiment": "Sentiment Succ.",
    "es": "ES",
    "ps": "PS",
    "ns": "NS",
}
#: Metrics compared with their own pre-edit value: the table gets a "pre_" column for each.
FLUENCY_METRICS = ("fluency", "fluency_unrelated")
# Printed as-is (already x100, as the papers print fluency); the others are fractions
# printed as percentages.
UNSCALED = (*FLUENCY_METRICS, *(f"pre_{m}" for m in FLUENCY_METRICS))


def _fmt_value(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if metric in UNSCALED else f"{100 * value:.2f}"


def render_table(result: Any) -> str:
    """The paper-style table: one column per metric, value and the number of cases."""
    cfg, agg = result.config, result.aggregate
    where = cfg.get("data_path", "?")
    sel = ""
    if cfg.get("offset") or cfg.get("limit") is not None:
        sel = f", records from {cfg.get('offset') or 0}" + (f", limit {cfg['limit']}" if cfg.get("limit") is not None else "")
    lines = [
        f"model   {cfg['model']} (fingerprint {cfg['model_fingerprint'][:16]})",
        f"method  {cfg['method']}, mode {cfg['mode']}" + (f", batch size {cfg['batch_size']}" if cfg["mode"] == "batch" else ""),
        "params  " + " ".join(f"{k}={_short(v)}" for k, v in cfg["params"].items()),
        f"data    {where} ({cfg.get('format', '?')}{sel}): {agg['cases']} cases, {agg['failed']} failed",
    ]
    if cfg["mode"] == "sequential":
        lines.append(f"edited  fingerprint after all edits {cfg['fingerprint_after'][:16]}")
    elif cfg.get("edits_digest"):
        lines.append(f"edited  digest of every edit's weights {cfg['edits_digest'][:16]} (compare runs for determinism)")
    spe = agg.get("seconds_per_edit")
    lines.append("speed   " + (f"{spe:.2f} s per edit (method only)" if spe is not None else "no edit succeeded"))
    cols = [(LABELS.get(m, m), _fmt_value(m, agg.get(m)), f"n={agg['n'][m]}") for m in result.metrics]
    cols += [(LABELS.get(m, m), "skipped", "") for m in result.skipped]
    widths = [max(len(a), len(b), len(c)) for a, b, c in cols]
    lines.append("")
    lines.append("| " + " | ".join(a.rjust(w) for (a, _, _), w in zip(cols, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    lines.append("| " + " | ".join(b.rjust(w) for (_, b, _), w in zip(cols, widths)) + " |")
    lines.append("| " + " | ".join(c.rjust(w) for (_, _, c), w in zip(cols, widths)) + " |")
    lines.append("")
    lines.append("Accuracies in % (teacher-forced, as the KnowEdit paper); fluency is the n-gram entropy x100;")
    lines.append("n = cases each value averages (a case without such prompts, or whose edit failed, is not counted).")
    if result.skipped:
        lines.append("skipped (not in --metrics): " + ", ".join(result.skipped))
    return "\n".join(lines)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)
