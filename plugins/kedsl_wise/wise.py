"""WISE's edit (see :mod:`kedsl_wise`): train one edit's share of the side memory.

The edit goes into shard ``installed edits at the layer // shard_edits``, on that shard's
random mask. Its values start at zero and are trained with SGD, every model parameter
frozen, on two terms:

- the target tokens' NLL (FT-M's objective, :func:`kedsl.toolkit.objectives.masked_target_loss`)
  with the trial memory (the installed memory plus this edit's values) answering at every
  position, as WISE trains its side memory;
- the routing loss: with ``s`` the activation score of :mod:`kedsl_wise.memory`, the
  edit's own positions (its prompt's last token and its target's, the ones that predict
  the answer) should reach ``edit_score``, unrelated prompts' positions stay at or below
  ``unrelated_score``, and the lowest edit score exceed the highest unrelated one by
  ``score_gap``: ``relu(edit_score - s_e) + relu(s_u - unrelated_score) + relu(gap - (min s_e - max s_u))``.
  With ``after_answer`` the position after each answer (its last token, which predicts
  what follows it) counts as unrelated too: otherwise generation keeps routing there and
  repeats the answer (our addition; WISE's router scores whole inputs).

The module's inputs do not depend on its own output, so they are read once, before
training, and the scores cost one matrix product per step; the blocks below the layer
are run once too, their outputs replayed at every step. Training stops when the NLL is
below ``nll_tol`` and the router separates the two (``act_ratio`` x the lowest edit score
above the highest unrelated one); the margins keep pushing until then. With
``margin_against="all_edits"`` "the lowest edit score" is the lowest of every edit in the
memory, this one included: the router's threshold once this edit is installed, which is
what decides the unrelated prompts' routing later (with ``this_edit`` an edit can stop
while unrelated prompts already score above a threshold an earlier, weaker edit set).

The unrelated prompts are a seeded choice that leaves out any prompt the edit itself uses:
of kedsl's known-fact prompts (``kedsl/toolkit/known_facts.json``, the same draw for every
edit), or of the shipped Natural Questions (``unrelated_from="questions"``, a zsRE training
file's locality prompts; a new draw for each edit, keyed by the number of edits already in
the memory, so that a sequence sees many of them and a rerun the same ones).
"""
from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import kedsl.toolkit
from kedsl.plugin import EditContext, EditOutcome, EditRequest, LoadedModel, Method, UsageError
from kedsl.toolkit.activations import StopForward, below_replayed, make_batch, pad_id, trace
from kedsl.toolkit.gradients import encode_answers
from kedsl.toolkit.objectives import masked_target_loss
from kedsl.toolkit.stats import SHIPPED_CORPORA, file_texts

from .config import WiseConfig
from .memory import WiseMemory, mask_seed, module_shape, shard_mask, side_memory

log = logging.getLogger(__name__)

KNOWN_FACTS = Path(kedsl.toolkit.__file__).parent / "known_facts.json"


def unrelated_prompts(requests: list[EditRequest], count: int, seed: int, source: str = "known_facts", draw: int = 0) -> list[str]:
    """``count`` prompts of ``source`` (see the module doc), a seeded choice, none of them
    an edited prompt; ``draw`` (only read for ``questions``) picks a new choice."""
    if source == "known_facts":
        pool = {f["prompt"] for f in json.loads(KNOWN_FACTS.read_text(encoding="utf-8"))["facts"]}
        rng = random.Random(seed)
    elif source == "questions":
        pool = set(file_texts(SHIPPED_CORPORA["questions"]))
        rng = random.Random(seed * 1_000_003 + draw)
    else:
        raise AssertionError(f"unknown unrelated source {source!r}: the config's choices let it through")
    prompts = sorted(pool - {r.prompt for r in requests})
    return rng.sample(prompts, min(count, len(prompts)))


@torch.no_grad()
def module_io(model: LoadedModel, path: str, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and the main memory's output of module ``path`` at every position
    (float32), the forward pass ending there."""
    memory = side_memory(model.module(path))
    with trace(model, [path], inputs=True, outputs=True, stop_after=path) as rec, memory.bypassed() if memory else contextlib.nullcontext():
        try:
            model.model(**inputs, use_cache=False)
        except StopForward:
            pass
    return rec.inputs[path].to(torch.float32), rec.outputs[path].to(torch.float32)


def scores(x: torch.Tensor, out_norm: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Activation scores ``|x Δᵀ| / |o|`` for inputs ``x`` (n, d_in)."""
    return (x @ delta.T).norm(dim=-1) / out_norm.clamp(min=1e-12)


class Wise(Method):
    """The ``wise`` method: one side-memory attachment per edit (batch: the requests train
    one share together)."""

    def touches(self, model: LoadedModel, params: dict[str, Any]) -> list[str]:
        model.check_layer(WiseConfig.from_params(params).layer)
        return []  # the weights stay as they are: the outcome is a side-memory attachment

    def apply(self, model: LoadedModel, requests: list[EditRequest], params: dict[str, Any], context: EditContext) -> EditOutcome:
        cfg = WiseConfig.from_params(params, context.seed)
        model.check_layer(cfg.layer)
        if not requests:
            raise UsageError("wise got no edit requests", "give at least one edit")
        start = time.perf_counter()
        path = model.mlp_out_weight_name(cfg.layer).rsplit(".", 1)[0]
        module = model.module(path)
        memory = side_memory(module, create=True)
        assert memory is not None
        shape = module_shape(model, cfg.layer)
        shard = len(memory) // cfg.shard_edits
        seed = mask_seed(cfg.seed, cfg.layer, shard)
        mask = shard_mask(shape, cfg.mask_ratio, seed).to(model.device)
        installed = memory.delta()
        base = installed.to(model.device) if installed is not None else torch.zeros(shape, device=model.device)

        # the module's inputs: the edit's answer-predicting positions, every real position of the unrelated prompts
        answers = encode_answers(model, [(r.prompt, r.target) for r in requests])
        x_all, o_all = module_io(model, path, {"input_ids": answers.ids, "attention_mask": answers.mask})
        at = answers.predicting()
        x_e, o_e = x_all[at], o_all[at].norm(dim=-1)
        # the position after the answer (its last token, predicting what follows) should not route:
        # generation that kept routing there would answer again ("Michigan, University of Michigan, ...")
        last = answers.mask.sum(1) - 1
        rows_at = torch.arange(len(requests), device=last.device)
        x_after, o_after = x_all[rows_at, last], o_all[rows_at, last].norm(dim=-1)
        tok = model.tokenizer
        unrelated = unrelated_prompts(requests, cfg.unrelated, cfg.seed, cfg.unrelated_from, draw=len(memory))
        rows = [tok(p, add_special_tokens=True)["input_ids"] for p in unrelated]
        batch = make_batch(rows, pad_id(tok), model.device, side="left")
        x_u, o_u = module_io(model, path, batch.inputs())
        real = batch.attention_mask.bool()
        x_u, o_u = x_u[real], o_u[real].norm(dim=-1)
        if cfg.after_answer:
            x_u, o_u = torch.cat([x_u, x_after]), torch.cat([o_u, o_after])

        values = torch.zeros(shape, device=model.device, requires_grad=True)
        # the lowest score the router's threshold will also be taken from (margin_against="all_edits")
        floor = memory.lowest_score() if cfg.margin_against == "all_edits" else None

        def trial() -> torch.Tensor:  # the memory every training forward uses
            return base + values * mask

        flags = {n: p.requires_grad for n, p in model.model.named_parameters()}
        was_training = model.model.training
        history: list[tuple[float, float]] = []
        try:
            for p in model.model.parameters():
                p.requires_grad_(False)
            model.model.eval()  # no dropout: the edit must be deterministic
            opt = torch.optim.SGD([values], lr=cfg.lr)
            # the blocks below the side memory see none of it: run once, replayed at every step
            replayed = below_replayed(model, cfg.layer, lambda: masked_target_loss(model, requests))
            with memory.training(module, trial), replayed, torch.enable_grad():
                for _ in range(cfg.steps):
                    opt.zero_grad(set_to_none=True)
                    nll = masked_target_loss(model, requests)
                    d = trial()
                    s_e, s_u = scores(x_e, o_e, d), scores(x_u, o_u, d)
                    low = s_e.min() if floor is None else torch.clamp(s_e.min(), max=floor)
                    routing = (F.relu(cfg.edit_score - s_e).mean() + F.relu(s_u - cfg.unrelated_score).mean()
                               + F.relu(cfg.score_gap - (low - s_u.max())))  # fmt: skip
                    history.append((float(nll.detach()), float(routing.detach())))
                    separated = cfg.act_ratio * float(low.detach()) > float(s_u.detach().max())  # the router would split them
                    if history[-1][0] < cfg.nll_tol and separated:
                        break
                    (nll + cfg.routing_weight * routing).backward()
                    opt.step()
        finally:
            for n, p in model.model.named_parameters():
                p.requires_grad_(flags[n])
            model.model.train(was_training)
        with torch.no_grad():
            trained = (values * mask).detach()
            score = float(scores(x_e, o_e, base + trained).min())
            unrelated_max = float(scores(x_u, o_u, base + trained).max())
        seconds = time.perf_counter() - start
        nll_end, routing_end = history[-1]
        if cfg.act_ratio * (score if floor is None else min(score, floor)) <= unrelated_max:
            log.warning("wise layer %d: the router does not separate the edit (score %.3f, threshold share %g) from unrelated "
                        "prompts (up to %.3f) after %d steps", cfg.layer, score, cfg.act_ratio, unrelated_max, len(history))  # fmt: skip
        elif nll_end >= cfg.nll_tol:
            log.info("wise layer %d: target NLL %.3f is above nll_tol %g after %d steps", cfg.layer, nll_end, cfg.nll_tol, len(history))
        context.attach(model, WiseMemory(cfg.layer, shard, seed, shape, cfg.mask_ratio, trained[mask], score, cfg.act_ratio, cfg.density))
        log.info("wise layer %d shard %d: %d request(s), %d steps, NLL %.3f -> %.3f, edit score %.3f, unrelated max %.3f, %.1fs",
                 cfg.layer, shard, len(requests), len(history), history[0][0], nll_end, score, unrelated_max, seconds)  # fmt: skip
        return context.outcome(
            layer=cfg.layer, shard=shard, steps=len(history), loss_start=history[0][0], loss_end=nll_end, routing_loss=routing_end,
            edit_score=score, unrelated_score_max=unrelated_max, threshold=memory.threshold(), seconds=seconds,
        )  # fmt: skip
