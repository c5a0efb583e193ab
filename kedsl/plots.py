"""Pictures a person reads without the paper: causal-trace heatmaps and per-layer curves.

matplotlib with the Agg backend (files only, no display); imported only by the commands
that draw.
"""
from __future__ import annotations

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
    """An editor's training: the training loss (left axis) and the validation score (right
    axis) over steps, the best validation marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=150)
    losses = [(c["step"], c["loss"]) for c in curve if c.get("loss") is not None]
    if losses:
        ax.plot(*zip(*losses), marker="o", markersize=3, color="tab:blue", label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (at validation)", color="tab:blue")
    right = ax.twinx()
    scores = [(c["step"], c["score"]) for c in curve]
    right.plot(*zip(*scores), marker="s", markersize=3, color="tab:orange", label="validation score")
    best = max(scores, key=lambda s: s[1])
    right.axvline(best[0], linestyle="--", color="grey", linewidth=1)
    right.set_ylabel("validation score", color="tab:orange")
    ax.set_title(f"{title}\nbest validation {best[1]:.3f} at step {best[0]}", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: str | Path) -> Path:
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
