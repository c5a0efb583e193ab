"""Pictures a person reads without the paper: causal-trace heatmaps and per-layer curves.

matplotlib with the Agg backend (files only, no display); imported only by the commands
that draw.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

KIND_TITLES = {
    "hidden": "whole hidden state (residual stream) restored at one layer",
    "mlp": "MLP output restored over a window of layers",
    "attn": "attention output restored over a window of layers",
}
KIND_COLOURS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def trace_heatmap(result: Any, path: str | Path) -> Path:
    """Tokens × layers, colour = indirect effect (restored minus corrupted probability of
    the answer); subject tokens are starred. ``result``: a TraceResult."""
    plt = _pyplot()
    effects = result.effects()
    labels = [repr(t)[1:-1] + (" *" if i in result.subject_tokens else "") for i, t in enumerate(result.tokens)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * result.num_layers + 3), 0.42 * len(labels) + 2.2), dpi=150)
    vmax = max(1e-6, max(max(r) for r in effects))
    im = ax.imshow(effects, cmap=KIND_COLOURS.get(result.kind, "Blues"), vmin=min(0.0, min(min(r) for r in effects)), vmax=vmax, aspect="auto")
    ax.set_yticks(range(len(labels)), labels)
    step = 1 if result.num_layers <= 16 else 2
    ax.set_xticks(range(0, result.num_layers, step))
    window = f" (window {result.window})" if result.kind != "hidden" else ""
    ax.set_xlabel(f"layer{window}")
    ax.set_ylabel("input token (* = subject, noised)")
    ax.set_title(
        f"{KIND_TITLES.get(result.kind, result.kind)}\n"
        f"{result.prompt!r} -> {result.answer!r}: p = {result.clean_prob:.3f} clean, "
        f"{result.corrupted_prob:.3f} with the subject noised ({result.samples} samples)",
        fontsize=8,
    )
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(f"indirect effect: p({result.answer.strip()!r}) restored − corrupted", fontsize=8)
    return _save(plt, fig, path)


def layer_curves(curves: dict[str, Sequence[float]], title: str, ylabel: str, path: str | Path, highlight: int | None = None) -> Path:
    """One line per kind over layers (e.g. the average indirect effect at the subject's
    last token); ``highlight`` marks a layer with a dashed vertical line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=150)
    colours = {"hidden": "tab:purple", "mlp": "tab:green", "attn": "tab:red"}
    for kind, ys in curves.items():
        ax.plot(range(len(ys)), list(ys), marker="o", markersize=3, label=kind, color=colours.get(kind))
    if highlight is not None:
        ax.axvline(highlight, linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def training_curve(curve: Sequence[dict[str, Any]], title: str, path: str | Path) -> Path:
    """An editor's training over steps, in two panels: the losses (the training loss
    averaged over each interval between validations, and the validation losses) and the
    validation numbers (each of the trainer's, and the score that picks the saved editor,
    whose step is marked)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=150)
    train = [(c["step"], c.get("train_loss_mean", c.get("loss"))) for c in curve]
    train = [(s, v) for s, v in train if v is not None]
    if train:
        left.plot(*zip(*train), marker="o", markersize=3, label="training loss (interval mean)")
    val_keys = [k for k in curve[0] if k.startswith("val_") and k != "val_score"] if curve else []
    for key in [k for k in val_keys if "loss" in k]:
        left.plot([c["step"] for c in curve], [c[key] for c in curve], marker="s", markersize=3, linestyle="--", label=key.removeprefix("val_").replace("_", " ") + " (validation)")
    left.set_xlabel("step")
    left.set_ylabel("loss")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    for key in [k for k in val_keys if "loss" not in k]:
        right.plot([c["step"] for c in curve], [c[key] for c in curve], marker=".", markersize=4, linewidth=1, label=key.removeprefix("val_").replace("_", " "))
    scores = [(c["step"], c["score"]) for c in curve]
    right.plot(*zip(*scores), marker="s", markersize=3, color="black", linewidth=2, label="score")
    best = max(scores, key=lambda s: s[1])
    right.axvline(best[0], linestyle="--", color="grey", linewidth=1)
    right.set_xlabel("step")
    right.set_ylabel("validation")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.suptitle(f"{title}: best validation score {best[1]:.3f} at step {best[0]}", fontsize=9)
    return _save(plt, fig, path)


def degradation_curves(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], title: str, path: str | Path) -> Path:
    """How a model holds up as sequential edits accumulate (``kedsl bench --mode
    sequential --checkpoints N``). ``runs``: (label, curve) pairs, a curve being the points
    of one result file. One run: one panel, a line per metric. Several: a panel per metric,
    a line per run, so methods compare on the same axes."""
    plt = _pyplot()
    metrics: list[str] = []
    for _, curve in runs:
        for point in curve:
            metrics += [m for m, v in point["metrics"].items() if v is not None and m not in metrics]
    if not metrics:
        raise ValueError("the curves hold no measured values")

    def xy(curve: Sequence[dict[str, Any]], m: str) -> tuple[list[int], list[float]]:
        pts = [(p["edits"], p["metrics"][m] * _percent(m)) for p in curve if p["metrics"].get(m) is not None]
        return [x for x, _ in pts], [y for _, y in pts]

    if len(runs) == 1:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=150)
        entropy = [m for m in metrics if _percent(m) == 1.0]
        right = ax.twinx() if entropy else None  # fluency (an entropy) on its own scale
        for i, m in enumerate(metrics):
            target = right if m in entropy else ax
            target.plot(*xy(runs[0][1], m), marker="s" if m in entropy else "o", markersize=3, linestyle="--" if m in entropy else "-",
                        color=f"C{i}", label=_metric_label(m))  # fmt: skip
        _curve_axes(ax, f"{title}: {runs[0][0]}", "accuracy (%)")
        if right is not None:
            right.set_ylabel("fluency (n-gram entropy)")
            handles = ax.get_legend_handles_labels()
            extra = right.get_legend_handles_labels()
            ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=7)
    else:
        cols = min(3, len(metrics))
        rows = (len(metrics) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), dpi=150, squeeze=False)
        for ax, m in zip(axes.flat, metrics):
            for label, curve in runs:
                ax.plot(*xy(curve, m), marker="o", markersize=3, label=label)
            _curve_axes(ax, _metric_label(m), "value", legend=False)
        # one legend for all panels: in the first free panel, else under the panels
        handles, labels = axes.flat[0].get_legend_handles_labels()
        labels = [textwrap.fill(label, 60, subsequent_indent="  ") for label in labels]
        free = list(axes.flat)[len(metrics):]
        for ax in free:
            ax.set_axis_off()
        if free:
            free[0].legend(handles, labels, loc="center", fontsize=8, frameon=False)
        else:
            fig.legend(handles, labels, loc="lower center", ncol=1, fontsize=8, frameon=False)
            fig.subplots_adjust(bottom=0.08 + 0.05 * len(runs))
        fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)


def _percent(metric: str) -> float:
    """Accuracies are drawn in % (as the tables); fluency is an entropy, drawn as it is."""
    return 1.0 if metric.startswith("fluency") or metric.startswith("pre_fluency") else 100.0


def _metric_label(metric: str) -> str:
    return metric.replace("_", " ") + ("" if _percent(metric) == 1.0 else " (%)")


def _curve_axes(ax: Any, title: str, ylabel: str, legend: bool = True) -> None:
    ax.set_xlabel("edits so far")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)


def _save(plt: Any, fig: Any, path: str | Path) -> Path:
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
