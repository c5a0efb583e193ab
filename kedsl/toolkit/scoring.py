"""Batched scoring primitives shared by metrics, methods and benchmarks.

Two operations, both batched across many prompts so that evaluating hundreds of prompts
costs a handful of forward passes, not hundreds:

* :func:`teacher_forced` feeds ``prompt + target`` (tokenized jointly, see
  :mod:`kedsl.toolkit.tokens` for the span and leading-space rule) and returns, for each
  target token, the model's argmax and the log-probability of the target token.
* :func:`greedy` decodes greedily from many prompts at once.

Padding: sequences are padded on the **left** with explicit ``position_ids`` (counted
over real tokens only) and an attention mask, so a padded row sees exactly the positions
and context it would see alone, for rotary (LLaMA) and learned (GPT-2) position
embeddings alike. Left padding puts every row's target at the end of the batch, so the
model's own head computes logits only for the last ``max(n) + 1`` positions
(``logits_to_keep``): the vocabulary projection, by far the largest matmul for a small
model, runs on a few positions per row, and family-specific head behaviour (logit
scaling, soft-capping) is kept because the model's own head runs. Inputs are sorted by
length before batching to waste little compute on padding; results come back in input
order.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from ..model.handle import LoadedModel
from .activations import accepts_logits_to_keep, cache_keyword, make_batch, pad_id, returned_cache
from .tokens import Encoded, encode_pair

log = logging.getLogger(__name__)


@dataclass
class TFScore:
    """Teacher-forced scores of one target after one prompt."""

    target_ids: list[int]
    predicted: list[int]  # argmax of the model at each target position
    logprobs: list[float]  # log P(target token | prompt, earlier target tokens)

    @property
    def accuracy(self) -> float:
        """Share of target positions where the argmax is the target token."""
        hits = sum(int(p == t) for p, t in zip(self.predicted, self.target_ids))
        return hits / len(self.target_ids)

    @property
    def logprob(self) -> float:
        """log P(whole target | prompt): the sum of the per-token log-probs."""
        return float(sum(self.logprobs))

    @property
    def mean_logprob(self) -> float:
        return self.logprob / len(self.target_ids)


def _padded(rows: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = make_batch(rows, pad, device, side="left")
    return b.input_ids, b.attention_mask, b.position_ids


def _batches(order: list[int], batch_size: int) -> Iterable[list[int]]:
    for s in range(0, len(order), batch_size):
        yield order[s : s + batch_size]


@torch.no_grad()
def score_encoded(model: LoadedModel, encoded: Sequence[Encoded], batch_size: int = 32) -> list[TFScore]:
    """Teacher-forced scores for pairs already tokenized (see :func:`teacher_forced`)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    for e in encoded:
        if not e.target_ids or e.prompt_len < 1:
            raise ValueError("every encoded pair needs at least one prompt token and one target token")
    net = model.model
    pad = pad_id(model.tokenizer)
    keep_ok = accepts_logits_to_keep(net)
    out: list[TFScore | None] = [None] * len(encoded)
    # What the model is fed: an in-context memory (IKE) may prepend to each prompt; the
    # target stays the last tokens of the row, which is all the scoring below relies on.
    fed = [
        model.contextualize(list(e.input_ids[: e.prompt_len])) + list(e.input_ids[e.prompt_len :])
        for e in encoded
    ] if model.attachments else [e.input_ids for e in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(fed[i]))
    for chunk in _batches(order, batch_size):
        rows = [fed[i] for i in chunk]
        ids, mask, pos = _padded(rows, pad, model.device)
        width = ids.shape[1]
        n_max = max(len(encoded[i].target_ids) for i in chunk)
        # Logits at position j predict token j+1: the targets (the last n tokens of each
        # row) are predicted by the n positions before the last one.
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "use_cache": False}
        if keep_ok:
            keep = n_max + 1
            kwargs["logits_to_keep"] = keep
        else:
            keep = width
        logits = net(**kwargs).logits.float()  # (b, keep, vocab)
        logp = torch.log_softmax(logits, dim=-1)
        for r, i in enumerate(chunk):
            e = encoded[i]
            n = len(e.target_ids)
            # in the kept window, token at absolute column c is predicted at column c-1;
            # the target occupies the last n columns of the row.
            cols = torch.arange(keep - 1 - n, keep - 1, device=logp.device)
            tgt = torch.tensor(e.target_ids, device=logp.device)
            lp = logp[r, cols]
            out[i] = TFScore(
                target_ids=list(e.target_ids),
                predicted=lp.argmax(-1).tolist(),
                logprobs=lp.gather(-1, tgt[:, None])[:, 0].tolist(),
            )
    return out  # type: ignore[return-value]


def teacher_forced(model: LoadedModel, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> list[TFScore]:
    """Score each ``(prompt, target)``: feed ``prompt + target`` and read the model's
    prediction at every target position, in batches.

    Each pair is tokenized jointly with :func:`kedsl.toolkit.tokens.encode_pair`: a single
    space joins prompt and target unless the prompt ends in whitespace or the target
    starts with whitespace or attaching punctuation; a token straddling the boundary
    counts as a target token.
    """
    tok = model.tokenizer
    return score_encoded(model, [encode_pair(tok, p, t) for p, t in pairs], batch_size=batch_size)


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """The ids of ``prompt`` as the model sees it (with BOS if the tokenizer adds one)."""
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


@torch.no_grad()
def greedy_ids(
    model: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 32,
    stop_at_eos: bool = True,
) -> list[list[int]]:
    """Greedy continuations (new token ids only) of already tokenized prompts.

    Batched with left padding and explicit position ids; a row that produces EOS stops
    there (the EOS is not returned) while the others go on.
    """
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    out: list[list[int]] = [[] for _ in prompt_ids]
    if max_new_tokens == 0 or not prompt_ids:
        return out
    if model.attachments:  # an in-context memory (IKE) may prepend to each prompt
        prompt_ids = [model.contextualize(list(p)) for p in prompt_ids]
    net = model.model
    pad = pad_id(model.tokenizer)
    eos = getattr(model.tokenizer, "eos_token_id", None) if stop_at_eos else None
    keep_ok = accepts_logits_to_keep(net)
    cache_kw = cache_keyword(net)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    for chunk in _batches(order, batch_size):
        ids, mask, pos = _padded([prompt_ids[i] for i in chunk], pad, model.device)
        b = ids.shape[0]
        done = torch.zeros(b, dtype=torch.bool, device=ids.device)
        new: list[list[int]] = [[] for _ in chunk]
        past = None
        step_ids, step_pos = ids, pos
        extra = {"logits_to_keep": 1} if keep_ok else {}  # the prompt's last position only
        for _ in range(max_new_tokens):
            res = net(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                **{cache_kw: past},
                use_cache=True,
                **extra,
            )
            past = returned_cache(res)
            nxt = res.logits[:, -1, :].float().argmax(-1)
            for r in range(b):
                if done[r]:
                    continue
                t = int(nxt[r])
                if eos is not None and t == eos:
                    done[r] = True
                else:
                    new[r].append(t)
            if bool(done.all()):
                break
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            step_ids = nxt[:, None]
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
        for r, i in enumerate(chunk):
            out[i] = new[r]
    return out


def greedy(model: LoadedModel, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 32) -> list[list[int]]:
    """Greedy continuations (new token ids) of ``prompts``, batched; stops a row at EOS.

    Equal to decoding each prompt alone (tested on LLaMA and GPT-2).
    """
    tok = model.tokenizer
    return greedy_ids(model, [encode_prompt(tok, p) for p in prompts], max_new_tokens, batch_size)


def greedy_text(model: LoadedModel, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Decoded greedy continuations (special tokens dropped)."""
    tok = model.tokenizer
    return [tok.decode(ids, skip_special_tokens=True) for ids in greedy(model, prompts, max_new_tokens, batch_size)]
