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

Speed (all measured in bench/rome_speed.py): parameters are frozen during the search
(backward computes only ∂loss/∂δ), the batch is left-padded so the model's head computes
logits only for the target positions (``logits_to_keep``), and bf16 autocast is
available for CPUs with AMX.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..model.handle import LoadedModel
from .activations import accepts_logits_to_keep, add_at, add_rank_one, frozen, make_batch, pad_id, trace
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
    bf16: bool = False  # bf16 autocast for the forward/backward passes (CPU with AMX: ~4x)


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
) -> ValueSearchResult:
    """Find ``δ`` per fact (see the module docstring). ``templates[0]`` must be ``"{}"``:
    the plain prompt gives ``initial``. With ``direction`` (one fact only: the rank-one
    edit's input direction, shape ``(d_in,)``) ``δ`` is applied as the weight edit
    ``δ directionᵀ`` at every token instead of added at the subject's last token. The
    model's weights are unchanged on return."""
    cfg = config or ValueSearchConfig()
    if not templates or templates[0] != "{}":
        raise ValueError('the first context template must be the plain "{}"')
    if direction is not None and len(facts) != 1:
        raise ValueError("a rank-one direction applies to a single fact's search")
    t_start = time.perf_counter()
    tok = model.tokenizer
    dev = model.device

    # rows: for each fact, one per template (prompt + target minus its last token), then
    # one "{subject} is a" row for the KL term.
    rows: list[list[int]] = []
    row_fact: list[int] = []
    subj_last: list[int] = []
    targets: list[list[int]] = []  # empty for KL rows
    plain_row: list[int] = []
    kl_row: list[int] = []
    for f_i, fact in enumerate(facts):
        for t_i, template in enumerate(templates):
            enc: SubjectEncoded = encode_with_subject(tok, fact.prompt, fact.subject, fact.target, template_prefix(template))
            if t_i == 0:
                plain_row.append(len(rows))
            rows.append(enc.input_ids[:-1])
            row_fact.append(f_i)
            subj_last.append(enc.subject_last)
            targets.append(enc.target_ids)
        kl_enc = encode_with_subject(tok, cfg.kl_prompt.format(fact.subject), fact.subject)
        kl_row.append(len(rows))
        rows.append(kl_enc.input_ids)
        row_fact.append(f_i)
        subj_last.append(kl_enc.subject_last)
        targets.append([])

    batch = make_batch(rows, pad_id(tok), dev, side="left")
    net = model.model
    keep_ok = accepts_logits_to_keep(net)
    n_max = max(len(t) for t in targets)
    keep = n_max if keep_ok else batch.input_ids.shape[1]
    kwargs: dict[str, Any] = dict(batch.inputs(), use_cache=False)
    if keep_ok:
        kwargs["logits_to_keep"] = keep
    cols = [batch.col(r, subj_last[r]) for r in range(len(rows))]
    rows_idx = list(range(len(rows)))

    # gather indices for the target tokens: (row, column in the kept window, token id)
    g_row, g_col, g_tok, g_owner = [], [], [], []
    for r, tg in enumerate(targets):
        n = len(tg)
        for j, t in enumerate(tg):
            g_row.append(r)
            g_col.append(keep - n + j)
            g_tok.append(t)
            g_owner.append(r)
    g_row_t = torch.tensor(g_row, device=dev)
    g_col_t = torch.tensor(g_col, device=dev)
    g_tok_t = torch.tensor(g_tok, device=dev)
    # weight of each gathered token: 1 / (n target tokens of its row · n templates)
    per_tok_w = torch.tensor([1.0 / (len(targets[r]) * len(templates)) for r in g_row], device=dev)
    tok_fact = torch.tensor([row_fact[r] for r in g_row], device=dev)
    kl_rows_t = torch.tensor(kl_row, device=dev)
    n_facts = len(facts)
    # the plain prompt's target tokens: the stop criterion needs each to be the argmax
    plain_set = set(plain_row)
    plain_tok = torch.tensor([i for i, r in enumerate(g_row) if r in plain_set], device=dev)
    plain_fact = torch.tensor([row_fact[g_row[i]] for i in plain_tok.tolist()], device=dev)

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16 and dev.type == "cpu")

    with frozen(model):
        with torch.no_grad(), trace(model, [path], inputs=False, outputs=True) as rec, autocast:
            out0 = net(**kwargs)
        y0 = rec.outputs[path].float()
        initial = torch.stack([y0[r, cols[r]] for r in plain_row])  # (n_facts, d)
        kl_ref = torch.log_softmax(out0.logits[kl_rows_t, -1].float(), dim=-1)

        deltas = torch.zeros_like(initial, requires_grad=True)
        opt = torch.optim.Adam([deltas], lr=cfg.lr)
        max_norm = cfg.clamp_norm_factor * initial.norm(dim=-1)
        init_sq = (initial.norm(dim=-1) ** 2).clamp(min=1e-12)
        fact_of_row = torch.tensor(row_fact, device=dev)
        res = ValueSearchResult(deltas=initial, initial=initial)
        nll_f = torch.zeros(n_facts)
        best_loss = torch.full((n_facts,), float("inf"), device=dev)
        best_delta = torch.zeros_like(initial)
        best_nll = torch.zeros(n_facts, device=dev)
        for step in range(cfg.steps + 1):
            if direction is not None:
                perturb = add_rank_one(model, path, deltas[fact_of_row], direction)
            else:
                perturb = add_at(model, path, rows_idx, cols, deltas[fact_of_row])
            with perturb, autocast:
                logits = net(**kwargs).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            tok_lp = logp[g_row_t, g_col_t, g_tok_t]
            nll_f = torch.zeros(n_facts, device=dev).index_add(0, tok_fact, -tok_lp * per_tok_w)
            kl_lp = logp[kl_rows_t, -1]
            kl_f = (kl_ref.exp() * (kl_ref - kl_lp)).sum(-1)
            wd_f = cfg.weight_decay * (deltas.norm(dim=-1) ** 2) / init_sq
            loss_f = nll_f + cfg.kl_factor * kl_f + wd_f
            loss = loss_f.sum()
            with torch.no_grad():
                better = loss_f < best_loss
                best_loss = torch.where(better, loss_f, best_loss)
                best_delta[better] = deltas[better]
                best_nll = torch.where(better, nll_f, best_nll)
                hit = logp[g_row_t[plain_tok], g_col_t[plain_tok]].argmax(-1) == g_tok_t[plain_tok]
                plain_ok = ~torch.zeros(n_facts, dtype=torch.bool, device=dev).index_put((plain_fact[~hit],), torch.tensor(True, device=dev))
            res.loss.append(float(loss.detach()))
            res.nll.append(nll_f.tolist())
            log.debug("v search step %d: loss %.4f nll %s plain ok %s", step, float(loss.detach()), [round(x, 3) for x in nll_f.tolist()], plain_ok.tolist())
            if float(nll_f.detach().max()) < cfg.nll_tol and bool(plain_ok.all()):
                best_delta, best_nll = deltas.detach().clone(), nll_f.detach()  # converged: the current δ
                break
            if step == cfg.steps:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            res.steps = step + 1
            with torch.no_grad():
                norms = deltas.norm(dim=-1)
                scale = torch.where(norms > max_norm, max_norm / norms.clamp(min=1e-12), torch.ones_like(norms))
                deltas.mul_(scale[:, None])
    res.deltas = best_delta.detach().clone()
    res.target_prob = torch.exp(-best_nll.detach()).tolist()
    res.seconds = time.perf_counter() - t_start
    return res
