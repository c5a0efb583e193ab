"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT").

Three runs of the same prompt:

* clean: the model as it is; it gives the answer's probability ``p_clean`` and the clean
  state of every (token, layer) cell;
* corrupted: Gaussian noise added to the token embeddings of the subject (scale: 3 × the
  standard deviation of the embeddings of the subject tokens, the paper's rule), several
  noise samples; the answer's probability drops to ``p_corrupt``;
* corrupted with one cell restored: the clean state put back at one (token, layer); the
  probability that comes back, minus ``p_corrupt``, is that cell's *indirect effect*.

``kind`` says which state is restored: ``hidden`` (a block's output, the residual
stream), ``mlp`` or ``attn`` (a sublayer's output, restored over a window of layers
around the cell's layer, as in the paper, because a single sublayer's effect is small).

Everything runs on :mod:`kedsl.toolkit.activations` (``edit_output`` for the noise,
``replace_at`` for restorations). Restorations are batched: each forward pass carries
``samples`` rows for each of many cells, so one (prompt, kind) costs a handful of passes.
"""
from __future__ import annotations

import contextlib
import json
from importlib import resources
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..errors import DataError
from ..model.handle import LoadedModel
from .activations import accepts_logits_to_keep, edit_output, replace_at, trace
from .generation import generate
from .precision import resolve_bf16
from .stats import base_fingerprint, stats_root
from .tokens import subject_token_span

log = logging.getLogger(__name__)

KINDS = ("hidden", "mlp", "attn")
NOISE_STDS = 3.0  # the paper's multiple of the subject embeddings' standard deviation


@dataclass
class TraceResult:
    """One prompt's trace for one kind: ``scores[t][l]`` is the answer's mean probability
    with cell (token t, layer l) restored."""

    prompt: str
    subject: str
    kind: str
    tokens: list[str]
    subject_tokens: list[int]  # positions of the subject's tokens
    answer: str
    answer_id: int
    clean_prob: float
    corrupted_prob: float
    noise_scale: float
    samples: int
    window: int
    scores: list[list[float]] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.scores[0]) if self.scores else 0

    def effects(self) -> list[list[float]]:
        """Indirect effects: restored probability minus the corrupted probability."""
        return [[s - self.corrupted_prob for s in row] for row in self.scores]

    def strongest(self, n: int = 5) -> list[tuple[int, int, float]]:
        """The ``n`` cells with the largest indirect effect, as (token, layer, effect)."""
        cells = [(t, l, e) for t, row in enumerate(self.effects()) for l, e in enumerate(row)]
        return sorted(cells, key=lambda c: -c[2])[:n]

    def as_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "subject": self.subject,
            "kind": self.kind,
            "tokens": self.tokens,
            "subject_tokens": self.subject_tokens,
            "answer": self.answer,
            "answer_id": self.answer_id,
            "clean_prob": self.clean_prob,
            "corrupted_prob": self.corrupted_prob,
            "noise_scale": self.noise_scale,
            "samples": self.samples,
            "window": self.window,
            "scores": self.scores,
            "effects": self.effects(),
        }


def noise_scale(model: LoadedModel, prompts: Sequence[tuple[str, str]]) -> float:
    """``NOISE_STDS`` × the standard deviation of the embedding outputs over the subject
    tokens of ``prompts`` (pairs of prompt and subject), all embedding dimensions pooled."""
    vectors = []
    emb = model.module(model.arch.embed)
    for prompt, subject in prompts:
        ids, span = subject_token_span(model.tokenizer, prompt, subject)
        with torch.no_grad():
            e = emb(torch.tensor([ids], device=model.device))[0]
        vectors.append(e[list(span)].float())
    return NOISE_STDS * float(torch.cat(vectors).std())


def _cell_paths(model: LoadedModel, kind: str) -> list[str]:
    n = model.num_layers
    if kind == "hidden":
        return [f"{model.arch.layers}.{i}" for i in range(n)]
    if kind == "mlp":
        return [model.arch.mlp.format(i) for i in range(n)]
    if kind == "attn":
        return [model.arch.attn.format(i) for i in range(n)]
    raise ValueError(f"unknown trace kind {kind!r}; kinds: {', '.join(KINDS)}")


def window_layers(layer: int, window: int, num_layers: int) -> range:
    """The layers restored for a cell at ``layer``: ``window`` layers centred on it, cut
    at the model's first and last layer (so cells near the ends restore fewer layers, as
    in the paper); ``window`` 1 is the layer alone."""
    return range(max(0, layer - window // 2), min(num_layers, layer - window // 2 + window))


@contextlib.contextmanager
def corrupt_subject(model: LoadedModel, noise: torch.Tensor, positions: Sequence[int]):
    """Add ``noise[r % samples]`` (shape (samples, len(positions), d)) to the embedding
    output of every batch row ``r`` at ``positions``."""
    pos = torch.tensor(list(positions), device=noise.device)

    def fn(y: torch.Tensor) -> torch.Tensor:
        rows = y.shape[0]
        reps = noise.repeat(math.ceil(rows / noise.shape[0]), 1, 1)[:rows].to(y.dtype)
        y = y.clone()
        y[:, pos] = y[:, pos] + reps
        return y

    with edit_output(model, model.arch.embed, fn):
        yield


@torch.no_grad()
def causal_trace(
    model: LoadedModel,
    prompt: str,
    subject: str,
    kind: str = "hidden",
    samples: int = 10,
    window: int = 10,
    seed: int = 0,
    scale: float | None = None,
    answer_id: int | None = None,
    chunk_rows: int = 256,
    bf16: bool | None = None,
    positions: Sequence[int] | None = None,
) -> TraceResult:
    """Trace ``prompt`` (which contains ``subject``) for one ``kind``; see the module
    docstring. ``answer_id`` defaults to the model's greedy next token; ``scale`` to
    :func:`noise_scale` over this prompt. ``bf16``: autocast the corrupted passes (about
    3× faster on CPUs with AMX; probabilities then carry bf16 rounding; None: only where
    the CPU has native bf16).

    Cells before the subject's first token are not run: causal attention keeps their
    state identical in the clean and corrupted runs, so restoring them changes nothing
    and their score is the corrupted probability exactly. ``positions`` limits the cells
    run to those tokens (the others keep the corrupted probability); the dataset average
    needs only the subject's last token."""
    if kind not in KINDS:
        raise ValueError(f"unknown trace kind {kind!r}; kinds: {', '.join(KINDS)}")
    tok = model.tokenizer
    ids, span = subject_token_span(tok, prompt, subject)
    subj = list(span)
    n_tok, n_layers = len(ids), model.num_layers
    dev = model.device
    net = model.model
    inp = torch.tensor([ids], device=dev)
    paths = _cell_paths(model, kind)

    with trace(model, paths, inputs=False, outputs=True) as rec:
        clean_logits = net(input_ids=inp).logits[0, -1].float()
    clean_states = [rec.outputs[p][0] for p in paths]  # each (n_tok, d)
    if answer_id is None:
        answer_id = int(clean_logits.argmax())
    clean_prob = float(torch.softmax(clean_logits, -1)[answer_id])

    if scale is None:
        scale = noise_scale(model, [(prompt, subject)])
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = (torch.randn(samples, len(subj), model.hidden_size, generator=gen) * scale).to(dev)

    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(net) else {}
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=resolve_bf16(bf16) and dev.type == "cpu")

    def run(rows: int) -> torch.Tensor:
        """Mean answer probability per group of ``samples`` rows."""
        with autocast:
            logits = net(input_ids=inp.expand(rows, -1), use_cache=False, **keep).logits[:, -1].float()
        p = torch.softmax(logits, -1)[:, answer_id]
        return p.view(-1, samples).mean(-1)

    with corrupt_subject(model, noise, subj):
        corrupted_prob = float(run(samples)[0])
        run_tokens = [t for t in (positions if positions is not None else range(n_tok)) if t >= subj[0]]
        cells = [(t, l) for t in run_tokens for l in range(n_layers)]
        scores = torch.full((n_tok, n_layers), corrupted_prob)
        per_pass = max(1, chunk_rows // samples)
        for c0 in range(0, len(cells), per_pass):
            chunk = cells[c0 : c0 + per_pass]
            # per module: the (row, column) cells it must restore, and their clean values
            todo: dict[int, tuple[list[int], list[int]]] = {}
            for ci, (t, l) in enumerate(chunk):
                layers = [l] if kind == "hidden" else list(window_layers(l, window, n_layers))
                for layer in layers:
                    r_list, c_list = todo.setdefault(layer, ([], []))
                    for s in range(samples):
                        r_list.append(ci * samples + s)
                        c_list.append(t)
            with contextlib.ExitStack() as stack:
                for layer, (r_list, c_list) in todo.items():
                    values = clean_states[layer][c_list]
                    stack.enter_context(replace_at(model, paths[layer], r_list, c_list, values))
                probs = run(len(chunk) * samples)
            for ci, (t, l) in enumerate(chunk):
                scores[t, l] = probs[ci]
    log.info("trace %s (%s): clean %.3f corrupted %.3f, %d cells", prompt, kind, clean_prob, corrupted_prob, len(cells))
    return TraceResult(
        prompt=prompt,
        subject=subject,
        kind=kind,
        tokens=[tok.decode([i]) for i in ids],
        subject_tokens=subj,
        answer=tok.decode([answer_id]),
        answer_id=answer_id,
        clean_prob=clean_prob,
        corrupted_prob=corrupted_prob,
        noise_scale=scale,
        samples=samples,
        window=1 if kind == "hidden" else window,
        scores=scores.tolist(),
    )


# -- the dataset average --------------------------------------------------------------
@dataclass
class AverageTrace:
    """The dataset average: per kind, the mean indirect effect per layer at the subject's
    last token over ``kept`` facts the model answers correctly (of ``tried``)."""

    model: str
    tried: int
    kept: int
    samples: int
    window: int
    noise_scale: float
    effects: dict[str, list[float]] = field(default_factory=dict)
    facts: list[dict[str, Any]] = field(default_factory=list)

    def peak(self, kind: str) -> int:
        ys = self.effects[kind]
        return max(range(len(ys)), key=ys.__getitem__)

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "tried": self.tried,
            "kept": self.kept,
            "samples": self.samples,
            "window": self.window,
            "noise_scale": self.noise_scale,
            "effects": self.effects,
            "peaks": {k: self.peak(k) for k in self.effects},
            "facts": self.facts,
        }


def average_trace(
    model: LoadedModel,
    records: Sequence[dict[str, Any]],
    kinds: Sequence[str] = ("mlp", "attn"),
    samples: int = 10,
    window: int = 10,
    seed: int = 0,
    bf16: bool | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> AverageTrace:
    """Keep the records the model answers (its greedy continuation starts with the
    attribute), then average the indirect effect at the subject's last token per layer."""
    usable = [r for r in records if r["subject"] in r["prompt"]]
    continuations = generate(model, [r["prompt"] for r in usable], max_new_tokens=4) if usable else []
    known = [r for r, c in zip(usable, continuations) if c.strip().startswith(r["attribute"].strip()) and r["attribute"].strip()]
    if not known:
        raise DataError(f"the model answers none of the {len(records)} facts", "try more records (--limit) or another dataset")
    scale = noise_scale(model, [(r["prompt"], r["subject"]) for r in known])
    sums = {k: [0.0] * model.num_layers for k in kinds}
    facts = []
    for i, r in enumerate(known):
        if progress:
            progress(i, len(known), r["subject"])
        _, span = subject_token_span(model.tokenizer, r["prompt"], r["subject"])
        last = span[-1]
        row: dict[str, Any] = {"subject": r["subject"], "prompt": r["prompt"], "attribute": r["attribute"]}
        for kind in kinds:
            res = causal_trace(model, r["prompt"], r["subject"], kind=kind, samples=samples, window=window, seed=seed + i, scale=scale, bf16=bf16, positions=[last])
            eff = res.effects()[last]
            sums[kind] = [a + b for a, b in zip(sums[kind], eff)]
            row[kind] = eff
            row["clean_prob"], row["corrupted_prob"] = res.clean_prob, res.corrupted_prob
        facts.append(row)
    return AverageTrace(
        model=model.ref,
        tried=len(records),
        kept=len(known),
        samples=samples,
        window=window,
        noise_scale=scale,
        effects={k: [v / len(known) for v in s] for k, s in sums.items()},
        facts=facts,
    )


# -- layer=auto --------------------------------------------------------------------------

AUTO_LAYER_SAMPLES = 5
AUTO_LAYER_WINDOW = 10


def known_facts() -> list[dict[str, Any]]:
    """The famous facts shipped with kedsl for ``layer=auto`` (subject, prompt, attribute)."""
    data = json.loads(resources.files("kedsl.toolkit").joinpath("known_facts.json").read_text(encoding="utf-8"))
    return list(data["facts"])


def mlp_profile(model: LoadedModel, records: Sequence[dict[str, Any]] | None = None, samples: int = AUTO_LAYER_SAMPLES,
                window: int = AUTO_LAYER_WINDOW, seed: int = 0) -> dict[str, Any]:
    """The average MLP indirect effect per layer at the subject's last token over the
    facts the model answers (default: :func:`known_facts`). Cached next to the
    second-moment statistics, keyed by the base model's fingerprint, when ``records`` is
    the default set."""
    path = stats_root() / f"{base_fingerprint(model)[:16]}-mlp-profile-known{len(known_facts())}-s{samples}-w{window}-seed{seed}.json"
    if records is None and path.is_file():
        return json.loads(path.read_text())
    avg = average_trace(model, records if records is not None else known_facts(), ("mlp",), samples, window, seed,
                        progress=lambda i, n, s: log.info("layer=auto: tracing fact %d/%d (%s)", i + 1, n, s))
    profile = {"effects": avg.effects["mlp"], "kept": avg.kept, "tried": avg.tried, "layer": avg.peak("mlp")}
    if records is None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(profile))
        tmp.replace(path)
    return profile


def auto_layer(model: LoadedModel) -> int:
    """``layer=auto``: the layer where the model's average MLP indirect effect at the
    subject's last token peaks (the paper's criterion for choosing ROME's layer)."""
    profile = mlp_profile(model)
    log.info("layer=auto: layer %d (MLP effect peak over %d known facts)", profile["layer"], profile["kept"])
    return int(profile["layer"])
