"""The target-value search shared by ROME, MEMIT and AlphaEdit ("compute v*" / "compute z").

For each fact (prompt with subject, target) find a vector ``δ`` that, added to the output
of one module (ROME: the MLP output projection of layer L; MEMIT: the residual stream
after the last edited layer) at the subject's last token, makes the model produce the
target. Minimised by Adam, as in Meng et al. (2022)::

    loss = NLL(target | each context-templated prompt)            (mean over templates)
         + kl_factor · KL(p₀ ‖ p) of the next token after "{subject} is a"
         + weight_decay · ‖δ‖² / ‖v₀‖²

with ``‖δ‖ ≤ clamp_norm_factor · ‖v₀‖`` after each step (``v₀``: the module's unedited
output at the subject's last token of the plain prompt). Several facts are optimised
together in one batch, each with its own ``δ`` (the loss is a sum of per-fact terms, so
this equals optimising each alone).

Two refinements over the paper's loop, both measured on ZsRE records 0-99 (see
kedsl_rome.rome.LAYER_SWEEP):

* ``direction``: a rank-one edit ``ΔW = δ dᵀ`` (ROME: ``d = u/(uᵀk*)``) does not add the
  same ``δ`` in every context: a token whose key is ``k`` receives ``δ·(dᵀk)``, and that
  holds at every token, the target's own tokens included. Given ``d``, the search runs
  the module as the edited one (:func:`kedsl.toolkit.activations.add_rank_one`), so it
  optimises the edit it will make rather than a uniform ``δ`` at one token that the
  plain prompt may then only partly receive.
* Stopping and the returned ``δ``: the search stops once every fact's mean target NLL is
  below ``nll_tol`` *and* every target token is the argmax after the plain prompt (the
  mean over templates can be low while the plain prompt still misses a token); each
  fact keeps the ``δ`` of its lowest loss seen, so a late overshoot is not returned.

Speed (measured in bench/rome_speed.py and bench/memit_speed.py): parameters are frozen
during the search (backward computes only ∂loss/∂δ), the batch is left-padded so the
model's head computes logits only for the target positions (``logits_to_keep``), bf16
autocast is used where the CPU has native bf16 (:mod:`kedsl.toolkit.precision`), and
without a rank-one direction (MEMIT, AlphaEdit) each row is cut at the subject's last
token: the tokens before it cannot see ``δ``, so they run once and every step runs only
the rest on their cached keys and values (:class:`kedsl.toolkit.activations.SplitBatch`;
1.4-1.6x per step for 10 ZsRE facts with 3 templates on SmolLM2), and on those cut rows
the decoder layers below the edit point cannot see ``δ`` either, so their outputs are
recorded once and replayed at every step (:func:`kedsl.toolkit.activations.replaying`).
On CPU the steps run attention with PyTorch's math kernel, whose backward is far cheaper
than the fused kernel's (:func:`kedsl.toolkit.activations.attention_for_backward`), and
under bf16 autocast the linear weights are cast once per search instead of on every call
(:func:`kedsl.toolkit.precision.linear_weights_as`). Measured on a MEMIT search of 10
ZsRE facts (25 steps, one thread): 66 s before these three, 49 s with the kernel and the
weight copies, 36 s with the replay too.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..model.handle import LoadedModel
from .precision import linear_weights_as, resolve_bf16
from .activations import (
    SplitBatch,
    accepts_logits_to_keep,
    attention_for_backward,
    add_at,
    add_rank_one,
    cache_argument,
    frozen,
    make_batch,
    make_split_batch,
    pad_id,
    prefix_keys_values,
    record_layer_outputs,
    replaying,
    run_suffix,
    splits_exactly,
    trace,
)
from .tokens import SubjectEncoded, encode_with_subject

log = logging.getLogger(__name__)


@dataclass
class Fact:
    """One fact for the search: ``prompt`` contains ``subject``; ``target`` is the answer."""

    prompt: str
    subject: str
    target: str


@dataclass
class ValueSearchConfig:
    lr: float = 0.5
    steps: int = 25
    weight_decay: float = 1e-3
    kl_factor: float = 0.0625
    clamp_norm_factor: float = 4.0
    nll_tol: float = 0.05  # stop once every fact's mean target NLL is below this
    kl_prompt: str = "{} is a"
    bf16: bool | None = None  # bf16 autocast (None: only where the CPU has native bf16, see toolkit.precision)
    prefix_cache: bool = True  # run the tokens before the subject's last once (no rank-one direction only)

    @classmethod
    def from_method(cls, cfg: Any) -> "ValueSearchConfig":
        """From a method config that names these settings the way ROME's parameters do
        (``v_lr``, ``v_steps``, ``v_weight_decay``, ``v_nll_tol``, ``kl_factor``,
        ``clamp_norm_factor``, ``bf16``)."""
        return cls(
            lr=cfg.v_lr,
            steps=cfg.v_steps,
            weight_decay=cfg.v_weight_decay,
            kl_factor=cfg.kl_factor,
            clamp_norm_factor=cfg.clamp_norm_factor,
            nll_tol=cfg.v_nll_tol,
            bf16=cfg.bf16,
        )


@dataclass
class ValueSearchResult:
    deltas: torch.Tensor  # (n_facts, d): the vector added at the subject's last token
    initial: torch.Tensor  # (n_facts, d): the module's unedited output there (plain prompt)
    loss: list[float] = field(default_factory=list)  # total loss per step
    nll: list[list[float]] = field(default_factory=list)  # per step, per fact
    steps: int = 0
    seconds: float = 0.0
    target_prob: list[float] = field(default_factory=list)  # exp(-NLL) per fact, last step

    @property
    def targets(self) -> torch.Tensor:
        """``initial + deltas``: the output each fact should have (MEMIT's z)."""
        return self.initial + self.deltas


@dataclass
class _Layout:
    """One batch of the search: its rows and the indices its loss gathers."""

    kwargs: dict[str, Any]
    rows: list[int]
    cols: list[int]  # per row: the column of its subject's last token
    row_fact: torch.Tensor
    g_row: torch.Tensor  # per target token: row, column in the kept logits, token id,
    g_col: torch.Tensor  # weight in its fact's NLL, fact, and (g_plain) which of them
    g_tok: torch.Tensor  # belong to plain-prompt rows
    g_w: torch.Tensor
    g_fact: torch.Tensor
    g_plain: torch.Tensor
    kl_rows: torch.Tensor
    kl_fact: torch.Tensor
    plain: list[int]  # rows of the plain prompts, in fact order
    split: SplitBatch | None = None  # set: rows cut at the subject's last token (see search_values)
    prefix: Any = None  # the key/value cache the cut rows' prefixes leave
    below: Sequence[torch.nn.Module] = ()  # the layers below the edit point, replayed on cut rows
    replay: list[Any] | None = None  # their outputs in the cut rows' suffix pass

    def forward(self, net: torch.nn.Module) -> Any:
        if self.split is None:
            return net(**self.kwargs)
        if self.replay is None:
            return run_suffix(net, self.split, self.prefix, **self.kwargs)
        with replaying(self.below, self.replay):
            return run_suffix(net, self.split, self.prefix, **self.kwargs)


def layers_below(model: LoadedModel, path: str) -> list[torch.nn.Module]:
    """The decoder layers that run before module ``path`` is reached and cannot see a
    change to its output: all layers up to and including ``path``'s own when ``path`` is a
    layer, the layers before it when ``path`` is inside one, none when it is elsewhere."""
    head = f"{model.arch.layers}."
    if not path.startswith(head):
        return []
    index, _, rest = path[len(head):].partition(".")
    if not index.isdigit():
        return []
    stop = int(index) + (0 if rest else 1)
    return list(model.module(model.arch.layers))[:stop]


def template_prefix(template: str) -> str:
    """The text before ``{}`` in a context template (``"{}"`` → ``""``)."""
    if not template.endswith("{}") or template.count("{}") != 1:
        raise ValueError(f"context template {template!r} must end with its single '{{}}'")
    return template[:-2]


def search_values(
    model: LoadedModel,
    path: str,
    facts: Sequence[Fact],
    templates: Sequence[str],
    config: ValueSearchConfig | None = None,
    direction: torch.Tensor | None = None,
    groups: Sequence[int] | None = None,
) -> ValueSearchResult:
    """Find ``δ`` per fact (see the module docstring). ``templates[0]`` must be ``"{}"``:
    the plain prompt gives ``initial``. With ``direction`` (one fact only: the rank-one
    edit's input direction, shape ``(d_in,)``) ``δ`` is applied as the weight edit
    ``δ directionᵀ`` at every token instead of added at the subject's last token. The
    model's weights are unchanged on return.

    ``groups`` (one group index per fact, ``0..g-1``; default: a group per fact) makes the
    facts of a group share one ``δ``: it minimises the sum of their losses (its weight
    decay and norm bound taken against their mean ``‖v₀‖``), stops when all of them are
    done, and is returned for each of them (see
    :func:`kedsl.toolkit.multilayer.subject_groups`)."""
    cfg = config or ValueSearchConfig()
    if not templates or templates[0] != "{}":
        raise ValueError('the first context template must be the plain "{}"')
    if direction is not None and len(facts) != 1:
        raise ValueError("a rank-one direction applies to a single fact's search")
    fact_group = list(range(len(facts))) if groups is None else list(groups)
    if len(fact_group) != len(facts) or sorted(set(fact_group)) != list(range(len(set(fact_group)))):
        raise ValueError("groups must give each fact a group index, numbering the groups 0..g-1")
    t_start = time.perf_counter()
    tok = model.tokenizer
    dev = model.device

    # rows: for each fact, one per template (prompt + target minus its last token), then
    # one "{subject} is a" row for the KL term.
    rows: list[list[int]] = []
    row_fact: list[int] = []
    subj_last: list[int] = []
    targets: list[list[int]] = []  # empty for KL rows
    plain_rows: set[int] = set()
    for f_i, fact in enumerate(facts):
        for t_i, template in enumerate(templates):
            enc: SubjectEncoded = encode_with_subject(tok, fact.prompt, fact.subject, fact.target, template_prefix(template))
            if t_i == 0:
                plain_rows.add(len(rows))
            rows.append(enc.input_ids[:-1])
            row_fact.append(f_i)
            subj_last.append(enc.subject_last)
            targets.append(enc.target_ids)
        kl_enc = encode_with_subject(tok, cfg.kl_prompt.format(fact.subject), fact.subject)
        rows.append(kl_enc.input_ids)
        row_fact.append(f_i)
        subj_last.append(kl_enc.subject_last)
        targets.append([])

    net = model.model
    keep_ok = accepts_logits_to_keep(net)
    n_templates = len(templates)
    # δ changes nothing before the subject's last token (causal attention), so without a
    # rank-one direction (which changes every token) the rows are cut there: the part
    # before runs once, each step only the rest (bench/memit_speed.py measures the gain)
    split = cfg.prefix_cache and direction is None and cache_argument(net) is not None and splits_exactly(net, max(map(len, rows)))
    # ... and on the cut rows the layers below the edit point see no δ either: their
    # outputs are recorded once per layout and replayed at every step
    below = layers_below(model, path) if split else []
    use_bf16 = resolve_bf16(cfg.bf16) and dev.type == "cpu"
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16)

    def layout(active: Sequence[int]) -> _Layout:
        """The batch of the rows of the ``active`` facts and where its loss looks."""
        chosen = set(active)
        sel = [r for r in range(len(rows)) if row_fact[r] in chosen]
        sb: SplitBatch | None = None
        if split:
            sb = make_split_batch([rows[r] for r in sel], [subj_last[r] for r in sel], pad_id(tok), dev)
            width = sb.suffix_ids.shape[1]
            kwargs: dict[str, Any] = {}
            cols = sb.suffix_offsets  # the subject's last token opens each suffix
        else:
            batch = make_batch([rows[r] for r in sel], pad_id(tok), dev, side="left")
            width = batch.input_ids.shape[1]
            kwargs = dict(batch.inputs(), use_cache=False)
            cols = [batch.col(i, subj_last[r]) for i, r in enumerate(sel)]
        keep = max(len(targets[r]) for r in sel) if keep_ok else width
        if keep_ok:
            kwargs["logits_to_keep"] = keep
        g_row, g_col, g_tok, g_w, g_fact, g_plain = [], [], [], [], [], []
        kl_rows, kl_fact, plain = [], [], []
        for i, r in enumerate(sel):
            tg = targets[r]
            if not tg:
                kl_rows.append(i)
                kl_fact.append(row_fact[r])
            if r in plain_rows:
                plain.append(i)
            for j, t in enumerate(tg):
                if r in plain_rows:
                    g_plain.append(len(g_row))
                g_row.append(i)
                g_col.append(keep - len(tg) + j)
                g_tok.append(t)
                g_w.append(1.0 / (len(tg) * n_templates))  # mean over tokens, then templates
                g_fact.append(row_fact[r])
        t = lambda xs, **kw: torch.tensor(xs, device=dev, **kw)  # noqa: E731
        prefix = replay = None
        if sb is not None:
            with autocast, attention_for_backward(dev):
                prefix = prefix_keys_values(net, sb)
                if below:
                    replay = record_layer_outputs(net, below, lambda: run_suffix(net, sb, prefix, **kwargs))
        return _Layout(
            split=sb,
            prefix=prefix,
            below=below,
            replay=replay,
            kwargs=kwargs,
            rows=list(range(len(sel))),
            cols=cols,
            row_fact=t([row_fact[r] for r in sel]),
            g_row=t(g_row), g_col=t(g_col), g_tok=t(g_tok), g_w=t(g_w), g_fact=t(g_fact), g_plain=t(g_plain, dtype=torch.long),
            kl_rows=t(kl_rows), kl_fact=t(kl_fact), plain=plain,
        )

    n_facts = len(facts)
    n_groups = max(fact_group) + 1
    members = [[f for f in range(n_facts) if fact_group[f] == g] for g in range(n_groups)]
    bf16_weights = linear_weights_as(net, torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    with frozen(model), bf16_weights:
        lay = layout(list(range(n_facts)))
        with torch.no_grad(), trace(model, [path], inputs=False, outputs=True) as rec, autocast:
            out0 = lay.forward(net)
        y0 = rec.outputs[path].float()
        initial = torch.stack([y0[i, lay.cols[i]] for i in lay.plain])  # (n_facts, d), fact order
        kl_ref = torch.zeros(n_facts, out0.logits.shape[-1], device=dev)
        kl_ref[lay.kl_fact] = torch.log_softmax(out0.logits[lay.kl_rows, -1].float(), dim=-1)
        del out0, y0

        group_of = torch.tensor(fact_group, device=dev)
        count = torch.zeros(n_groups, device=dev).index_add(0, group_of, torch.ones(n_facts, device=dev))
        init_norm = torch.zeros(n_groups, device=dev).index_add(0, group_of, initial.norm(dim=-1)) / count
        deltas = torch.zeros(n_groups, initial.shape[1], device=dev, requires_grad=True)
        opt = torch.optim.Adam([deltas], lr=cfg.lr)
        max_norm = cfg.clamp_norm_factor * init_norm
        init_sq = (init_norm**2).clamp(min=1e-12)
        res = ValueSearchResult(deltas=initial, initial=initial)
        best_loss = torch.full((n_groups,), float("inf"), device=dev)
        best_delta = torch.zeros(n_groups, initial.shape[1], device=dev)
        best_nll = torch.zeros(n_facts, device=dev)
        active = list(range(n_groups))
        row_delta = group_of[lay.row_fact]
        for step in range(cfg.steps + 1):
            act = torch.tensor(active, device=dev)
            if direction is not None:
                perturb = add_rank_one(model, path, deltas[row_delta], direction)
            else:
                perturb = add_at(model, path, lay.rows, lay.cols, deltas[row_delta])
            with perturb, autocast, attention_for_backward(dev):
                logits = lay.forward(net).logits
            # log-softmax only where the loss looks (target tokens, the KL rows' last
            # token): the full (rows, keep, vocab) tensor dominated a batch's memory
            tgt_lp = torch.log_softmax(logits[lay.g_row, lay.g_col].float(), dim=-1)  # (tokens, vocab)
            tok_lp = tgt_lp.gather(1, lay.g_tok[:, None])[:, 0]
            nll_f = torch.zeros(n_facts, device=dev).index_add(0, lay.g_fact, -tok_lp * lay.g_w)
            kl_lp = torch.log_softmax(logits[lay.kl_rows, -1].float(), dim=-1)
            del logits
            ref = kl_ref[lay.kl_fact]
            kl_f = torch.zeros(n_facts, device=dev).index_add(0, lay.kl_fact, (ref.exp() * (ref - kl_lp)).sum(-1))
            wd_g = cfg.weight_decay * (deltas.norm(dim=-1) ** 2) / init_sq
            loss_g = torch.zeros(n_groups, device=dev).index_add(0, group_of, nll_f + cfg.kl_factor * kl_f) + wd_g
            loss = loss_g[act].sum()
            with torch.no_grad():
                better = torch.zeros(n_groups, dtype=torch.bool, device=dev)
                better[act] = loss_g[act] < best_loss[act]
                best_loss = torch.where(better, loss_g, best_loss)
                best_delta[better] = deltas[better]
                best_nll = torch.where(better[group_of], nll_f, best_nll)
                # a fact is done when its mean NLL is below tol and the plain prompt's
                # every target token is the argmax; a group when all its facts are
                miss = tgt_lp[lay.g_plain].argmax(-1) != lay.g_tok[lay.g_plain]
                plain_ok = torch.ones(n_facts, dtype=torch.bool, device=dev)
                plain_ok[lay.g_fact[lay.g_plain][miss]] = False
                done = [g for g in active if all(float(nll_f[f]) < cfg.nll_tol and bool(plain_ok[f]) for f in members[g])]
                for g in done:  # converged: the current δ
                    best_delta[g] = deltas[g]
                    for f in members[g]:
                        best_nll[f] = nll_f[f]
            res.loss.append(float(loss.detach()))
            res.nll.append(nll_f.detach().tolist())
            log.debug("v search step %d: loss %.4f, %d active, %d converged now", step, float(loss.detach()), len(active), len(done))
            active = [g for g in active if g not in set(done)]
            if not active or step == cfg.steps:
                break
            if done:  # each group stops on its own: drop the converged groups' rows
                loss = loss_g[torch.tensor(active, device=dev)].sum()
                lay_next = layout([f for g in active for f in members[g]])
            else:
                lay_next = lay
            opt.zero_grad()
            loss.backward()
            opt.step()
            res.steps = step + 1
            lay = lay_next
            row_delta = group_of[lay.row_fact]
            with torch.no_grad():
                norms = deltas.norm(dim=-1)
                scale = torch.where(norms > max_norm, max_norm / norms.clamp(min=1e-12), torch.ones_like(norms))
                deltas.mul_(scale[:, None])
    res.deltas = best_delta.detach()[group_of].clone()
    res.target_prob = torch.exp(-best_nll.detach()).tolist()
    res.seconds = time.perf_counter() - t_start
    return res
