"""Multi-layer key-value updates: the part MEMIT and AlphaEdit share.

For ``n`` facts and edited layers ``l_1 < … < l_m`` (``L = l_m``), with ``W_l`` the MLP
output projection of layer ``l`` (keys: its input; values: its output):

1. targets (:func:`search_targets`): ``z_i = h_L(i) + δ_i`` where ``h_L(i)`` is the
   residual stream after layer ``L`` at fact ``i``'s subject last token and ``δ_i`` comes
   from :func:`kedsl.toolkit.optimize.search_values`, all facts of a chunk in one batch;
2. :func:`spread_update`: for each layer ``l_j`` in ascending order, on the model as
   updated so far:

   * keys ``K`` (``d_in × n``): ``W``'s input at the subject's last token, averaged over
     the context templates;
   * residual ``R`` (``d_out × n``): ``(z − h_L) / (m − j + 1)``, the share of the
     remaining gap this layer takes (``h_L`` read again with the earlier layers updated;
     :class:`SpreadReader` reads both in one pass that reruns only the layers from the
     last one written);
   * ``ΔW = solve(layer, K, R)``, the method's own rule (MEMIT: :func:`least_squares_update`;
     AlphaEdit: the same projected onto the null space of preserved keys);
   * ``W += ΔW`` through the edit's weight journal (GPT-2's Conv1D stores ``W``
     transposed), so the executor can undo it bit-exactly.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..editing.outcome import EditContext
from ..editing.request import EditRequest
from ..model.handle import LoadedModel
from ..model.journal import WeightJournal
from .activations import first_tensor, hooked, make_batch, pad_id, read_at, record_layer_outputs, replaying
from .context import context_templates
from .linear_algebra import solve_product
from .multilayer_config import MultiLayerConfig
from .optimize import Fact, ValueSearchConfig, search_values, template_prefix
from .tokens import encode_with_subject

log = logging.getLogger(__name__)

#: ``solve(layer, K, R) -> ΔW``: float64, ``(d_out, d_in)`` in the un-transposed orientation.
LayerSolver = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def residual_path(model: LoadedModel, layer: int) -> str:
    """The module whose (first) output is the residual stream after ``layer``."""
    return f"{model.arch.layers}.{layer}"


def search_path(model: LoadedModel, layer: int) -> str:
    """Where the target search adds its ``δ``: the residual stream after ``layer``, or,
    where the block norms the MLP output before adding it (``arch.mlp_out_norm``, Gemma),
    the raw MLP output before that norm, as ROME searches. A ``δ`` found after the norm
    can ask for a change the norm cannot give (its output lies on a sphere); one found
    before it is, by construction, a change the last layer can make (:func:`normed_change`
    turns it into the residual stream's). Measured on Gemma 3 270M (tuning records 0-9,
    one edit at layer 2): searched after the norm, ``|δ|`` = 87 against a raw output of
    norm 7.6, and the update left the gap where it was (87 before, 94 after)."""
    if model.arch.mlp_out_norm is not None:
        return model.arch.mlp_out.format(layer)
    return residual_path(model, layer)


@torch.no_grad()
def normed_change(model: LoadedModel, layer: int, values: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """``N(v + δ) − N(v)`` (``(n, d)`` float32): what adding ``deltas`` to ``layer``'s raw
    MLP outputs ``values`` (both ``(n, d)``) adds to the residual stream through the
    block's norm on that output (``arch.mlp_out_norm``)."""
    assert model.arch.mlp_out_norm is not None, "normed_change needs an arch with mlp_out_norm"
    norm = model.module(model.arch.mlp_out_norm.format(layer))
    dtype = next(norm.parameters()).dtype
    v = values.to(device=model.device, dtype=dtype)
    return (norm(v + deltas.to(v)).float() - norm(v).float()).to(values.device)


def compute_keys(model: LoadedModel, layer: int, requests: Sequence[EditRequest], templates: Sequence[str]) -> torch.Tensor:
    """``K``: for each request, the mean over templates of layer ``layer``'s MLP output
    projection input at the subject's last token; one batched pass, float32 ``(d_in, n)``."""
    rows, positions = [], []
    for r in requests:
        for t in templates:
            enc = encode_with_subject(model.tokenizer, r.prompt, r.subject, prefix=template_prefix(t))
            rows.append(enc.input_ids)
            positions.append(enc.subject_last)
    keys = read_at(model, model.arch.mlp_out.format(layer), rows, positions, "input").float()
    return keys.reshape(len(requests), len(templates), -1).mean(1).T.contiguous()


def current_outputs(model: LoadedModel, layer: int, requests: Sequence[EditRequest]) -> torch.Tensor:
    """``h``: the residual stream after ``layer`` at each plain prompt's subject last token,
    float32 ``(d, n)``."""
    encs = [encode_with_subject(model.tokenizer, r.prompt, r.subject) for r in requests]
    h = read_at(model, residual_path(model, layer), [e.input_ids for e in encs], [e.subject_last for e in encs], "output")
    return h.float().T.contiguous()


def least_squares_update(keys: torch.Tensor, residuals: torch.Tensor, mom2: torch.Tensor | None, update_weight: float) -> torch.Tensor:
    """``ΔW`` (float64, ``d_out × d_in``) minimising ``λ·tr(ΔW C ΔWᵀ) + ‖ΔW K − R‖²``:
    setting the gradient to zero gives ``ΔW (λC + K Kᵀ) = R Kᵀ``, solved as
    ``(λC + K Kᵀ) ΔWᵀ = K Rᵀ``; for ``λ = 0`` (or no ``C``) the minimum-norm
    least-squares ``R K⁺``. ``keys``: ``(d_in, n)``; ``residuals``: ``(d_out, n)``."""
    k = keys.double()
    r = residuals.double()
    if mom2 is None or update_weight == 0:
        return r @ torch.linalg.pinv(k)
    a = update_weight * mom2.double() + k @ k.T
    return solve_product(a, k, r.T).T


@dataclass
class Targets:
    """The target hidden states of a batch and how the search went."""

    z: torch.Tensor  # (d, n) float32
    steps: int
    seconds: float
    loss: list[list[float]] = field(default_factory=list)  # per chunk, per step
    target_prob: list[float] = field(default_factory=list)  # per fact
    raw_deltas: torch.Tensor | None = None  # (d, n): δ itself, where it was added to the raw MLP output (arch.mlp_out_norm)


def subject_groups(requests: Sequence[EditRequest]) -> list[int]:
    """A group index per request, one group per subject (numbered in order of first
    appearance), for ``joint_subjects``. The facts of one subject are keyed at its last
    token, so their keys differ only through the words before it; separate shifts ask
    nearby keys for different values, one shift searched over all their prompts asks one
    value of all of them. Measured in MEMIT's 50-edit batches (``kedsl_memit.memit.SWEEP``,
    table 8): generalization of the facts that share a subject rose, their efficacy fell
    (ZsRE often gives one subject several answers to one question), so it is an option,
    off in the presets."""
    index: dict[str, int] = {}
    return [index.setdefault(r.subject, len(index)) for r in requests]


def search_chunks(groups: Sequence[int], size: int) -> list[list[int]]:
    """The facts (indices) of each target-search chunk: whole groups, in order, at most
    ``size`` facts a chunk unless one group alone is larger (``size`` 0: one chunk)."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    chunks: list[list[int]] = []
    for facts in members.values():
        if chunks and (size == 0 or len(chunks[-1]) + len(facts) <= size):
            chunks[-1].extend(facts)
        else:
            chunks.append(list(facts))
    return chunks


def search_targets(
    model: LoadedModel,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    last_layer: int,
    config: ValueSearchConfig,
    chunk: int = 0,
    progress: Callable[[str], None] | None = None,
    joint_subjects: bool = False,
) -> Targets:
    """``z`` for every request: the residual stream after ``last_layer`` that makes the
    model say its target (``h + δ``, ``δ`` searched at :func:`search_path`). Facts are
    searched ``chunk`` at a time (0: all together); the search's memory grows with the
    rows of a chunk (facts × templates). ``progress`` hears of each chunk when there are
    several (a large batch spends most of its time here). ``joint_subjects``: the facts
    of one subject share one ``δ``, searched over all their prompts (:func:`subject_groups`;
    a chunk then holds whole subjects)."""
    facts = [Fact(r.prompt, r.subject, r.target) for r in requests]
    groups = subject_groups(requests) if joint_subjects else list(range(len(facts)))
    chunks = search_chunks(groups, chunk)
    path = search_path(model, last_layer)
    parts = []
    done = 0
    for idx in chunks:
        local: dict[int, int] = {}
        part_groups = [local.setdefault(groups[i], len(local)) for i in idx]
        part = search_values(model, path, [facts[i] for i in idx], templates, config, groups=part_groups if joint_subjects else None)
        done += len(idx)
        log.info(
            "target search: %d facts (%d subjects), %d of %d done, %d steps, %.1fs, mean target prob %.3f",
            len(idx), len(local), done, len(facts), part.steps, part.seconds, sum(part.target_prob) / len(part.target_prob),
        )
        parts.append(part)
        if progress is not None and len(chunks) > 1:
            progress(f"target search: {done}/{len(facts)} facts")
    order = torch.tensor([i for idx in chunks for i in idx])
    where = torch.empty_like(order)
    where[order] = torch.arange(len(order))  # row of each request in the chunks' concatenation

    def gather(ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(ts)[where.to(ts[0].device)].float()

    raw_deltas = None
    if path == residual_path(model, last_layer):
        z = gather([p.targets for p in parts]).T.contiguous()
    else:  # δ was added to the raw MLP output, which the block norms before the residual stream
        values = gather([p.initial for p in parts])
        deltas = gather([p.deltas for p in parts])
        h = current_outputs(model, last_layer, requests)
        z = h + normed_change(model, last_layer, values, deltas).T.to(h.device)
        raw_deltas = deltas.T.contiguous()
    prob = [x for p in parts for x in p.target_prob]
    return Targets(
        raw_deltas=raw_deltas,
        z=z.contiguous(),
        steps=max(p.steps for p in parts),
        seconds=sum(p.seconds for p in parts),
        loss=[p.loss for p in parts],
        target_prob=[prob[int(w)] for w in where],
    )


class SpreadReader:
    """The keys and ``h_L`` the spread needs at each layer step, from one forward pass per
    step that recomputes only what the last write changed.

    A write to layer ``l``'s MLP output projection changes nothing below ``l``: the layers
    under the lowest one written since the previous read return the outputs recorded then
    (:func:`kedsl.toolkit.activations.replaying`), and a replayed layer's key is the one
    read then. The rows are each request's context-templated prompts cut after the
    subject's last token (nothing later reaches it); the plain ones (template ``"{}"``)
    give ``h_L``. Over the seven layers and two passes of the SmolLM2 preset this runs
    about half the layer-rows of reading keys and ``h_L`` afresh at every step. Rows run
    in chunks of ``chunk_rows``, sorted by length, so a large batch neither pads every row
    to its longest nor holds one pass over all of them in memory."""

    def __init__(self, model: LoadedModel, requests: Sequence[EditRequest], layers: Sequence[int], templates: Sequence[str], chunk_rows: int = 256):
        if not templates or templates[0] != "{}":
            raise ValueError('the first context template must be the plain "{}"')
        self.model = model
        self.layers = sorted(layers)
        self.n, self.t = len(requests), len(templates)
        rows = []
        for r in requests:
            for tpl in templates:
                enc = encode_with_subject(model.tokenizer, r.prompt, r.subject, prefix=template_prefix(tpl))
                rows.append(enc.input_ids[: enc.subject_last + 1])
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        chunks = [order[i : i + chunk_rows] for i in range(0, len(order), chunk_rows)]
        self.chunks = [torch.tensor(c, device=model.device) for c in chunks]  # row indices per chunk
        self.batches = [make_batch([rows[i] for i in c], pad_id(model.tokenizer), model.device, side="left") for c in chunks]
        self.blocks = list(model.module(model.arch.layers))[: self.layers[-1] + 1]
        self.recorded: list[list[Any] | None] = [None] * len(self.chunks)  # per chunk, every block's output in the last read
        self.key_rows: dict[int, torch.Tensor] = {}  # per edited layer, (rows, d_in), from the last read that ran it
        self.keys: dict[int, torch.Tensor] = {}  # per edited layer, (d_in, n): key_rows averaged over templates
        self.dirty_from = 0  # the lowest layer written since the last read

    def written(self, layer: int) -> None:
        """Layer ``layer``'s weights changed: it and everything above it must run again."""
        self.dirty_from = min(self.dirty_from, layer)

    @torch.no_grad()
    def read(self) -> torch.Tensor:
        """One pass; refreshes :attr:`keys` and returns ``h_L`` (``(d, n)`` float32)."""
        h_rows: torch.Tensor | None = None
        for c, (idx, batch) in enumerate(zip(self.chunks, self.batches)):
            h = self._read_chunk(c, idx, batch)
            if h_rows is None:
                h_rows = h.new_empty(self.n * self.t, h.shape[-1])
            h_rows[idx] = h
        self.dirty_from = len(self.blocks)
        for layer, k in self.key_rows.items():
            self.keys[layer] = k.reshape(self.n, self.t, -1).mean(1).T.contiguous()
        assert h_rows is not None
        return h_rows.reshape(self.n, self.t, -1)[:, 0].T.contiguous()

    def _read_chunk(self, c: int, idx: torch.Tensor, batch: Any) -> torch.Tensor:
        model, last_col = self.model, batch.input_ids.shape[1] - 1  # left padding: every row ends there
        recorded = self.recorded[c]
        replay = recorded[: self.dirty_from] if recorded is not None else []
        with hooked() as hs:
            for layer in self.layers:
                def pre(m: Any, args: tuple, _l: int = layer) -> None:
                    x = args[0][:, last_col].float()
                    if _l not in self.key_rows:
                        self.key_rows[_l] = x.new_empty(self.n * self.t, x.shape[-1])
                    self.key_rows[_l][idx] = x
                hs.append(model.module(model.arch.mlp_out.format(layer)).register_forward_pre_hook(pre))
            with replaying(self.blocks[: len(replay)], replay):
                outs = record_layer_outputs(model.model, self.blocks, lambda: model.model(**batch.inputs(), use_cache=False))
        self.recorded[c] = outs
        return first_tensor(outs[-1])[:, last_col].float()


#: The ridge of :func:`value_residuals`' inverse scale, relative to the mean squared scale.
RIDGE = 1e-2


@torch.no_grad()
def value_residuals(model: LoadedModel, layer: int, keys: torch.Tensor, residuals: torch.Tensor) -> torch.Tensor:
    """The change of ``layer``'s MLP output projection output that moves the residual
    stream by ``residuals`` (``(d, n)``), for the values ``v = W k`` at ``keys``.

    Where the block adds that output as it is, the two are the same. Where it norms it
    first (``arch.mlp_out_norm``: Gemma's RMSNorm ``N(v) = g ⊙ v / rms(v)``), it inverts
    the norm: ``N(v) + r = g ⊙ u`` asks for a direction ``u = v / rms(v) + r ⊘ g``, and
    ``v' = rms(v) · u / rms(u)`` is the output of ``v``'s size with that direction
    (``N(v') = g ⊙ u / rms(u)``: exact when ``rms(u) = 1``, that is for every change the
    norm can give; to first order it is ``rms(v) · r ⊘ g``). Returns ``v' − v``. (The
    spread's last layer does not use it: see :func:`spread_update`.)"""
    if model.arch.mlp_out_norm is None:
        return residuals
    norm = model.module(model.arch.mlp_out_norm.format(layer))
    w = model.read_weight(model.mlp_out_weight_name(layer)).float().to(keys.device)
    values = (w.T if model.arch.transposed else w) @ keys.float()  # (d_out, n)
    ones = torch.ones(1, values.shape[0], device=values.device, dtype=model.dtype)
    gain = norm(ones).float()[0]  # g: the norm of a vector of ones is its scale
    rms = values.pow(2).mean(0, keepdim=True).sqrt()
    # r ⊘ g, regularised: a real model's scales span orders of magnitude (Gemma 3 270M:
    # from 0 to 600 in one layer), and dividing by a scale near zero asks for a huge change
    # of v that the norm then turns into a wreck of every other prompt; the ridge leaves
    # what such a dimension cannot carry to the next pass and the next layer
    ridge = RIDGE * gain.pow(2).mean()
    direction = values / rms + residuals.float() * (gain / (gain.pow(2) + ridge))[:, None]
    return rms * direction / direction.pow(2).mean(0, keepdim=True).sqrt() - values


def spread_update(
    model: LoadedModel,
    requests: Sequence[EditRequest],
    layers: Sequence[int],
    templates: Sequence[str],
    targets: torch.Tensor,
    solve: LayerSolver,
    weights: WeightJournal,
    progress: Callable[[str], None] | None = None,
    passes: int = 1,
    chunk_rows: int = 256,
    raw_deltas: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Write ``targets`` (``(d, n)``, after the last of ``layers``) into the MLP output
    projections of ``layers`` (step 2 of the module docstring). Returns what happened per
    layer and the mean remaining gap ``‖z − h_L‖`` after the update. ``passes > 1`` runs
    the whole spread again on the gap the previous pass left (each layer's change moves
    the keys of the layers after it, so one pass closes only ~80% of the gap).
    ``chunk_rows``: rows per forward pass of the reads (:class:`SpreadReader`).
    ``raw_deltas`` (``(d, n)``, :attr:`Targets.raw_deltas`): on a model that norms the
    MLP output, the target search's ``δ``, added to the last layer's raw output. The last
    layer then writes ``f · δ``, ``f`` the share of the first gap still open (the gap's
    projection on it), rather than the norm's inverse of the gap: the norm cannot tell
    apart the changes that give one normed output at the edited token, but every token
    that shares the key gets a share of the change, and ``δ`` is the one the search tried
    on every context. On Gemma 3 270M (tuning records 0-3, layer 2), ``δ`` made all 4
    edits; the inverse of the gap, which the norm gives back exactly at the edited token,
    made none."""
    layers = sorted(layers)
    first_gap: torch.Tensor | None = None
    reader = SpreadReader(model, requests, layers, templates, chunk_rows)
    per_layer: list[dict[str, float]] = []
    for pass_no in range(passes):
        for j, layer in enumerate(layers):
            if progress:
                progress(f"layer {layer}" + (f" (pass {pass_no + 1} of {passes})" if passes > 1 else ""))
            gap = targets - reader.read()
            if first_gap is None:
                first_gap = gap
            keys = reader.keys[layer]
            if raw_deltas is not None and layer == layers[-1]:
                share = (gap * first_gap).sum(0) / first_gap.pow(2).sum(0).clamp(min=1e-12)
                residuals = raw_deltas.to(gap) * share[None, :]
            else:
                residuals = value_residuals(model, layer, keys, gap / (len(layers) - j))
            delta = solve(layer, keys, residuals)
            name = model.mlp_out_weight_name(layer)
            w = model.parameter(name)
            update = delta.T if model.arch.transposed else delta
            if tuple(update.shape) != tuple(w.shape):
                raise RuntimeError(f"update shape {tuple(update.shape)} does not match {name} {tuple(w.shape)}")
            weights.add_(name, update)
            reader.written(layer)
            per_layer.append({"layer": layer, "pass": pass_no, "gap_norm": float(gap.norm(dim=0).mean()), "update_norm": float(delta.norm())})
            log.debug("layer %d: mean gap %.3f, ||dW|| %.3f", layer, per_layer[-1]["gap_norm"], per_layer[-1]["update_norm"])
    final_gap = targets - reader.read()
    return {"per_layer": per_layer, "final_gap_norm": float(final_gap.norm(dim=0).mean())}


def multilayer_edit(
    model: LoadedModel,
    requests: Sequence[EditRequest],
    cfg: MultiLayerConfig,
    context: EditContext,
    solve: LayerSolver,
) -> dict[str, Any]:
    """A whole multi-layer edit: check, context templates, targets for all requests,
    the spread over ``cfg.layers`` with the method's ``solve``; returns the outcome info."""
    cfg.check(model, requests)
    method = cfg.method
    say = context.progress or (lambda s: None)
    t0 = time.perf_counter()
    templates = context_templates(model, cfg.context_lengths, cfg.context_count, cfg.seed)
    say(f"{method}: target search for {len(requests)} facts")
    found = search_targets(model, requests, templates, cfg.layers[-1], ValueSearchConfig.from_method(cfg), cfg.v_batch,
                           lambda s: say(f"{method}: {s}"), cfg.joint_subjects)
    spread = spread_update(model, requests, cfg.layers, templates, found.z, solve, context.weights, lambda s: say(f"{method}: {s}"), cfg.spread_passes,
                           raw_deltas=found.raw_deltas)
    seconds = time.perf_counter() - t0
    log.info("%s: %d facts, layers %s, %d search steps, %.1fs (search %.1fs)", method, len(requests), cfg.layers, found.steps, seconds, found.seconds)
    return {
        "layers": list(cfg.layers),
        "facts": len(requests),
        "steps": found.steps,
        "v_loss": found.loss[0] if len(found.loss) == 1 else found.loss,
        "seconds": seconds,
        "search_seconds": found.seconds,
        "search_target_prob": found.target_prob,
        "templates": len(templates),
        **spread,
    }
