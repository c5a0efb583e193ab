"""GRACE (Hartvigsen et al. 2023): train one codebook entry per request (see :mod:`kedsl_grace`).

For each request the key is the input of ``model.mlp_out(layer)`` at the last prompt
token (the prompt tokenized jointly with the target, exactly as scoring feeds it); the
radius is ``eps`` x the key's norm; the span is the target's token count (how many
positions from a match on the value replaces: those that predict the target); the value starts as the module's own output there and
is trained with Adam on FT-M's objective (teacher-forced cross-entropy of the target
tokens, :func:`kedsl.toolkit.objectives.masked_target_loss`) with the new entries live in
the codebook, so training runs the very lookup that inference runs. Only the values get
gradients: every model parameter is frozen for the duration and its flag restored after.
The trained entries become one :class:`~kedsl_grace.codebook.GraceCodebook` attachment;
the weights are never touched.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch

from kedsl.plugin import EditContext, EditOutcome, EditRequest, LoadedModel, Method, UsageError
from kedsl.toolkit.activations import StopForward, below_replayed, forward_until, make_batch, pad_id
from kedsl.toolkit.objectives import masked_target_loss
from kedsl.toolkit.tokens import encode_pair

from .codebook import GraceCodebook, codebook_of
from .config import GraceConfig

log = logging.getLogger(__name__)


@torch.no_grad()
def read_keys_and_outputs(model: LoadedModel, layer: int, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and the module's own output of ``model.mlp_out(layer)`` at the last token
    of each prompt (one left-padded batch, so the last column is every row's last token),
    as float32 ``(n, d_in)`` and ``(n, d_out)``. The capturing hook runs before any
    installed codebook's (``prepend``) and ends the forward pass, so it sees the plain
    module's output."""
    batch = make_batch(prompts, pad_id(model.tokenizer), model.device, side="left")
    caught: dict[str, torch.Tensor] = {}

    def grab(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        caught["keys"] = args[0][:, -1].detach().to(torch.float32).clone()
        caught["outputs"] = output[:, -1].detach().to(torch.float32).clone()
        raise StopForward

    handle = model.mlp_out(layer).register_forward_hook(grab, prepend=True)
    try:
        forward_until(model, batch)
    finally:
        handle.remove()
    return caught["keys"], caught["outputs"]


class Grace(Method):
    """The ``grace`` method: one codebook attachment per edit (batch: one entry per request)."""

    def touches(self, model: LoadedModel, params: dict[str, Any]) -> list[str]:
        cfg = GraceConfig.from_params(params)
        model.check_layer(cfg.layer)
        return []  # the weights stay as they are: the outcome is a codebook attachment

    def apply(self, model: LoadedModel, requests: list[EditRequest], params: dict[str, Any], context: EditContext) -> EditOutcome:
        cfg = GraceConfig.from_params(params)
        model.check_layer(cfg.layer)
        if not requests:
            raise UsageError("grace got no edit requests", "give at least one edit")
        start = time.perf_counter()
        encoded = [encode_pair(model.tokenizer, r.prompt, r.target) for r in requests]
        keys, outputs = read_keys_and_outputs(model, cfg.layer, [e.input_ids[: e.prompt_len] for e in encoded])
        _refuse_duplicate_prompts(requests, keys)
        radii = cfg.eps * keys.norm(dim=1)
        _log_overlaps(model, cfg.layer, keys, radii)

        value = outputs.clone().requires_grad_(True)
        spans = torch.tensor([len(e.target_ids) for e in encoded], dtype=torch.long)
        trial = GraceCodebook(cfg.layer, keys, value, radii, spans, cfg.eps)
        flags = {n: p.requires_grad for n, p in model.model.named_parameters()}
        was_training = model.model.training
        losses: list[float] = []
        attached = False
        try:
            for p in model.model.parameters():
                p.requires_grad_(False)
            model.model.eval()  # no dropout: the edit must be deterministic
            trial.attach(model)  # live for training only; the kept entries are attached below
            attached = True
            opt = torch.optim.Adam([value], lr=cfg.lr)
            # the blocks below the codebook's layer do not see it: run once, replayed at every step
            with below_replayed(model, cfg.layer, lambda: masked_target_loss(model, requests)), torch.enable_grad():
                for _ in range(cfg.steps):
                    opt.zero_grad(set_to_none=True)
                    loss = masked_target_loss(model, requests)
                    losses.append(float(loss.detach()))
                    if losses[-1] < cfg.nll_tol:
                        break
                    loss.backward()
                    opt.step()
        finally:
            if attached:
                trial.detach(model)
            for n, p in model.model.named_parameters():
                p.requires_grad_(flags[n])
            model.model.train(was_training)
        seconds = time.perf_counter() - start
        converged = losses[-1] < cfg.nll_tol
        if not converged:
            log.warning("grace layer %d: loss %.3f after %d steps is above nll_tol %g", cfg.layer, losses[-1], len(losses), cfg.nll_tol)
        context.attach(model, GraceCodebook(cfg.layer, keys, value.detach().clone(), radii, spans, cfg.eps))
        log.info("grace layer %d: %d entries, %d steps, loss %.3f -> %.3f, %.1fs", cfg.layer, len(requests), len(losses), losses[0], losses[-1], seconds)
        return context.outcome(
            layer=cfg.layer,
            entries=len(requests),
            steps=len(losses),
            loss_start=losses[0],
            loss_end=losses[-1],
            converged=converged,
            radius_mean=float(radii.mean()),
            seconds=seconds,
        )


def _refuse_duplicate_prompts(requests: list[EditRequest], keys: torch.Tensor) -> None:
    """Two requests of one batch with the same key (the same prompt) ask for two values at
    one point: no lookup can honour both."""
    if len(requests) < 2:
        return
    d = torch.cdist(keys, keys)
    d.fill_diagonal_(float("inf"))
    same = (d <= 1e-6 * keys.norm(dim=1, keepdim=True).clamp(min=1e-12)).nonzero().tolist()
    if same:
        i, j = same[0]
        raise UsageError(
            f"the batch edits the same prompt twice: {requests[i].prompt!r} -> {requests[i].target!r} and -> {requests[j].target!r}",
            "keep one target per prompt in a batch (a later edit of the same prompt replaces an earlier one)",
        )


def _log_overlaps(model: LoadedModel, layer: int, keys: torch.Tensor, radii: torch.Tensor) -> None:
    """Say how many installed entries lie within the new radii: those queries are split
    between old and new entries by nearest key (a Voronoi split), not by shrinking radii."""
    book = codebook_of(model.mlp_out(layer))
    if book is None or not book.hooked:
        return
    table = book.table(keys.device)
    within = int((torch.cdist(keys, table.keys) <= radii[:, None]).sum())
    if within:
        log.info("grace layer %d: %d installed entr%s within the new radius (split by nearest key)", layer, within, "y" if within == 1 else "ies")
