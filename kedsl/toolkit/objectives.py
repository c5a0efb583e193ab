"""Training objectives on edit requests, shared by the fine-tuning methods (FT-L, FT-M,
LoRA/AdaLoRA, GRACE): each returns a differentiable loss on the live model. An erasure's
target is its refusal, so the same objectives train erasures; :func:`unlikelihood_loss`
is the optional term that also pushes the old answer down."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..editing.request import EditRequest
from ..model.handle import LoadedModel
from .activations import accepts_logits_to_keep
from .tokens import encode_pair


def _batch(model: LoadedModel, requests: list[EditRequest]) -> tuple[list[list[int]], list[int], list[list[int]]]:
    encs = [encode_pair(model.tokenizer, r.prompt, r.target) for r in requests]
    return [e.input_ids for e in encs], [e.prompt_len for e in encs], [e.target_ids for e in encs]


def _pad(rows: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, device=device)
        mask[i, : len(r)] = 1
    return ids, mask


def _logits_from(model: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
    """Logits of the positions ``start`` onwards only: the vocabulary projection is the
    largest matrix product of a small model (262k rows for Gemma 3), and a target loss
    reads none of the positions before the first target."""
    keep = ids.shape[1] - start
    extra = {"logits_to_keep": keep} if accepts_logits_to_keep(model.model) else {}
    logits = model.model(input_ids=ids, attention_mask=mask, **extra).logits
    return logits[:, -keep:]


def masked_target_loss(model: LoadedModel, requests: list[EditRequest]) -> torch.Tensor:
    """FT-M: mean teacher-forced NLL of the target tokens, prompt positions masked out."""
    ids_rows, prompt_lens, _ = _batch(model, requests)
    ids, mask = _pad(ids_rows, 0, model.device)
    start = min(prompt_lens) - 1  # the first position whose logits predict a target token
    logits = _logits_from(model, ids, mask, start)
    labels = torch.full_like(ids, -100)
    for i, (row, pl) in enumerate(zip(ids_rows, prompt_lens)):
        labels[i, pl : len(row)] = ids[i, pl : len(row)]
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, start + 1 :].reshape(-1), ignore_index=-100)


def last_prompt_loss(model: LoadedModel, requests: list[EditRequest]) -> torch.Tensor:
    """FT-L (ROME's baseline objective): the prediction at the last prompt token is pushed
    towards every target token (mean NLL over the target's tokens at that one position)."""
    ids_rows, prompt_lens, target_rows = _batch(model, requests)
    prompts = [row[:pl] for row, pl in zip(ids_rows, prompt_lens)]
    ids, mask = _pad(prompts, 0, model.device)
    start = min(len(p) for p in prompts) - 1
    logp = torch.log_softmax(_logits_from(model, ids, mask, start), dim=-1)
    losses = [-logp[i, len(p) - 1 - start, t].mean() for i, (p, t) in enumerate(zip(prompts, target_rows))]
    return torch.stack(losses).mean()


def unlikelihood_loss(model: LoadedModel, requests: list[EditRequest]) -> torch.Tensor | None:
    """An unlearning term for erasures: mean over the old answer's tokens of
    ``-log(1 - P(token | prompt, earlier old tokens))``, teacher-forced; it falls as the
    old answer becomes unlikely. None when no request is an erasure with an old answer."""
    erased = [r for r in requests if r.kind == "erase" and r.old]
    if not erased:
        return None
    encs = [encode_pair(model.tokenizer, r.prompt, r.old or "") for r in erased]
    ids, mask = _pad([e.input_ids for e in encs], 0, model.device)
    logp = torch.log_softmax(model.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    terms = []
    for i, e in enumerate(encs):
        positions = torch.arange(e.prompt_len, len(e.input_ids), device=model.device)
        p_old = logp[i, positions - 1, ids[i, positions]].exp()  # logits at t - 1 predict token t
        terms.append(-torch.log1p(-p_old.clamp(max=1 - 1e-6)))
    return torch.cat(terms).mean()
