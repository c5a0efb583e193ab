"""Text sampled from the model itself: ROME's context templates and the default corpus.

ROME computes its key and value not only on the edit prompt but on the prompt prefixed
by a few short texts the model generates ("context templates"), so the edit holds in
varied contexts. A template is a string with one ``{}`` where the prompt goes; the plain
``"{}"`` always comes first.

Sampling uses its own seeded ``torch.Generator`` (the global RNG is untouched), top-k
sampling from a document-start token, so the same model and seed give the same texts.
"""
from __future__ import annotations

import logging
import weakref
from typing import Any, Sequence

import torch

from ..model.handle import LoadedModel
from .activations import cache_keyword, returned_cache

log = logging.getLogger(__name__)

# Templates per loaded model: computed once per (module object, settings), so sequential
# edits reuse the templates of the model as first seen, as ROME does.
_TEMPLATE_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, list[str]]]" = weakref.WeakKeyDictionary()


def start_token_id(tokenizer: Any) -> int:
    """The token generation starts from: a document separator if the vocabulary has one
    (``<|endoftext|>``), else BOS, else EOS."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for name in ("<|endoftext|>", "</s>", "<s>"):
        if name in vocab:
            return int(vocab[name])
    for attr in ("bos_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    raise ValueError("the tokenizer has no BOS/EOS token to start sampling from")


@torch.no_grad()
def sample_token_rows(
    model: LoadedModel,
    count: int,
    length: int,
    seed: int = 0,
    top_k: int | None = 5,
    batch_size: int = 64,
    autocast_bf16: bool = False,
) -> list[list[int]]:
    """``count`` sequences of ``length`` new tokens sampled after the start token.

    All rows share the start token, so no padding is needed; uses the KV cache.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    start = start_token_id(model.tokenizer)
    rows: list[list[int]] = []
    dev = model.device
    cache_kw = cache_keyword(model.model)
    for b0 in range(0, count, batch_size):
        b = min(batch_size, count - b0)
        ids = torch.full((b, 1), start, dtype=torch.long, device=dev)
        past = None
        new: list[torch.Tensor] = []
        for step in range(length):
            if length >= 64 and step % 32 == 0:
                log.info("sampling: batch %d/%d, token %d/%d", b0 // batch_size + 1, -(-count // batch_size), step, length)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16 and dev.type == "cpu"):
                res = model.model(input_ids=ids, use_cache=True, **{cache_kw: past})
            past = returned_cache(res)
            logits = res.logits[:, -1, :].float()
            if top_k is not None and top_k < logits.shape[-1]:
                vals, idx = logits.topk(top_k, dim=-1)
                probs = torch.softmax(vals, dim=-1)
                pick = torch.multinomial(probs.cpu(), 1, generator=gen).to(dev)
                nxt = idx.gather(-1, pick)
            else:
                probs = torch.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=gen).to(dev)
            new.append(nxt)
            ids = nxt
        rows.extend(torch.cat(new, dim=1).tolist())
    return rows


def sample_texts(model: LoadedModel, count: int, length: int, seed: int = 0, top_k: int | None = 5, **kw: Any) -> list[str]:
    """Decoded :func:`sample_token_rows` (special tokens dropped)."""
    tok = model.tokenizer
    return [tok.decode(r, skip_special_tokens=True) for r in sample_token_rows(model, count, length, seed, top_k, **kw)]


def context_templates(model: LoadedModel, lengths: Sequence[int] = (5, 10), count: int = 5, seed: int = 0) -> list[str]:
    """``["{}"]`` plus ``count`` generated texts of each token length in ``lengths``, each
    turned into a template ``"<text>. {}"`` (braces in the text are blanked, as in ROME).

    Cached per loaded model object and settings. ``count=0`` gives just ``["{}"]``.
    """
    key = (tuple(lengths), count, seed)
    per_model = _TEMPLATE_CACHE.setdefault(model.model, {})
    if key in per_model:
        return list(per_model[key])
    templates = ["{}"]
    if count > 0:
        for i, length in enumerate(lengths):
            texts = sample_texts(model, count, length, seed=seed + 1000 * i, top_k=5)
            templates += [t.replace("{", " ").replace("}", " ").strip() + ". {}" for t in texts]
        log.info("context templates (%d): %s", len(templates), templates)
    per_model[key] = templates
    return list(templates)
