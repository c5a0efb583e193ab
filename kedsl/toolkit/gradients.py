"""Gradient factors of linear layers, and the running statistics that normalise them.

For a linear layer ``y = W x`` and a loss ``L``, ``dL/dW = sum_t d_t x_t^T`` over the tokens
``t``, with ``x_t`` the layer's input and ``d_t = dL/dy_t``. Two methods edit from these
factors: MEND passes them through a trained network, UltraEdit solves a ridge system from
them in closed form. Both normalise ``z_t = [x_t; d_t]`` with running means and variances
carried across edits. The factors, the answer loss they come from and the running
statistics are implemented once, here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..model.handle import LoadedModel
from .tokens import encode_pair, encode_with_subject

K = TypeVar("K", bound=Hashable)

#: Added to variances before the square root: a feature that never varied is left at scale 1/sqrt(EPS)
#: of its deviation from the mean (which is then 0), never divided by zero.
EPS = 1e-6


@dataclass
class AnswerBatch:
    """A right-padded batch of prompt + answer rows; ``labels`` holds each row's answer
    tokens at their positions and -100 elsewhere."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    #: per row, the position of the subject's last token (-1: none given or not found)
    subject_last: torch.Tensor | None = None

    def predicting(self) -> torch.Tensor:
        """Boolean mask of the positions whose logits predict an answer token (``t - 1``
        for every answer token ``t``)."""
        out = torch.zeros_like(self.mask, dtype=torch.bool)
        out[:, :-1] = self.labels[:, 1:] != -100
        return out

    def predicting_and_subject(self) -> torch.Tensor:
        """:meth:`predicting` plus each row's subject's last token (where one was found)."""
        out = self.predicting()
        if self.subject_last is not None:
            rows = torch.nonzero(self.subject_last >= 0).flatten()
            out[rows, self.subject_last[rows]] = True
        return out

    def subject_keyed(self) -> torch.Tensor:
        """:meth:`predicting_and_subject` without the prompt's last position in the rows
        whose subject was found: the first answer token is then asked of the subject's
        last token alone (a paraphrase keeps the subject but not the prompt's ending); the
        later answer tokens stay where they are predicted."""
        out = self.predicting_and_subject()
        if self.subject_last is not None:
            rows = torch.nonzero(self.subject_last >= 0).flatten()
            prompt_end = (self.labels != -100).int().argmax(1) - 1  # predicts the first answer token
            out[rows, prompt_end[rows]] = False
            out[rows, self.subject_last[rows]] = True  # a prompt that ends with its subject keeps it
        return out


def encode_answers(model: LoadedModel, pairs: Sequence[tuple[str, str]], subjects: Sequence[str] | None = None) -> AnswerBatch:
    """``(prompt, answer)`` pairs tokenized jointly (kedsl's rule), right-padded. With
    ``subjects`` (one per pair), the batch also records where each subject's last token is
    (the last occurrence in the prompt; -1 where the prompt does not contain it)."""
    encs = [encode_pair(model.tokenizer, p, a) for p, a in pairs]
    width = max(len(e.input_ids) for e in encs)
    ids = torch.zeros((len(encs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(encs):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, e.prompt_len : n] = ids[i, e.prompt_len : n]
    subject_last = None
    if subjects is not None:
        subject_last = torch.full((len(encs),), -1, dtype=torch.long)
        for i, ((prompt, answer), subject, e) in enumerate(zip(pairs, subjects, encs)):
            try:
                located = encode_with_subject(model.tokenizer, prompt, subject, answer)
            except ValueError:
                continue
            if located.input_ids != e.input_ids:  # one tokenization rule for both
                raise AssertionError(f"subject location tokenized {prompt!r} differently")
            subject_last[i] = located.subject_last
        subject_last = subject_last.to(model.device)
    device = model.device
    return AnswerBatch(ids.to(device), mask.to(device), labels.to(device), subject_last)


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL of the answer tokens (logits at t - 1 predict token t)."""
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def answer_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Per row, the share of answer tokens that are the argmax (KnowEdit's Edit Succ.)."""
    predicted = logits[:, :-1].argmax(-1)
    gold = labels[:, 1:]
    out = []
    for p, g in zip(predicted, gold):
        sel = g != -100
        out.append(float((p[sel] == g[sel]).float().mean()) if sel.any() else float("nan"))
    return out


def linear_factors(
    model: LoadedModel, batch: AnswerBatch, modules: Mapping[K, nn.Module], answer_only: bool = False, keep: torch.Tensor | None = None
) -> dict[K, tuple[torch.Tensor, torch.Tensor]]:
    """Per module, its inputs ``X`` (tokens x d_in) and output gradients ``D`` (tokens x
    d_out) for the answer NLL of ``batch`` (float32): over every non-padding token, with
    ``answer_only`` over the positions that predict an answer token, or over the positions
    of a boolean mask ``keep``. ``dL/dW = D^T X`` over the tokens taken. The model's
    weights get no ``.grad`` (the graph starts at the embeddings)."""
    caught: dict[K, tuple[torch.Tensor, torch.Tensor]] = {}
    keys = list(modules)
    handles = [model.module(model.arch.embed).register_forward_hook(lambda m, a, out: out.detach().requires_grad_(True))]
    for key in keys:
        handles.append(modules[key].register_forward_hook(lambda m, args, out, key=key: caught.__setitem__(key, (args[0], out))))
    try:
        with torch.enable_grad():
            logits = model.model(input_ids=batch.ids, attention_mask=batch.mask).logits
            loss = answer_nll(logits, batch.labels)
            grads = torch.autograd.grad(loss, [caught[key][1] for key in keys])
    finally:
        for h in handles:
            h.remove()
    if keep is None:
        keep = batch.predicting() if answer_only else batch.mask.bool()
    return {key: (caught[key][0][keep].detach().float(), g[keep].detach().float()) for key, g in zip(keys, grads)}


# -- running statistics --------------------------------------------------------------------
def fold_moments(mean: torch.Tensor, m2: torch.Tensor, count: torch.Tensor, z: torch.Tensor) -> None:
    """Fold the rows of ``z`` into a running mean, sum of squared deviations ``m2`` and
    row count, in place (Chan et al.'s merge: exact for any split of the rows)."""
    with torch.no_grad():
        n = z.shape[0]
        if n == 0:
            return
        z = z.to(mean.dtype)
        batch_mean = z.mean(0)
        batch_m2 = ((z - batch_mean) ** 2).sum(0)
        total = count + n
        delta = batch_mean - mean
        mean += delta * (n / total)
        m2 += batch_m2 + delta**2 * (count * n / total)
        count += n


def standardise(z: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``(z - mean) / sqrt(var + EPS)``, per feature (the statistics in ``z``'s dtype)."""
    return (z - mean.to(z.dtype)) / torch.sqrt(var.to(z.dtype) + EPS)
