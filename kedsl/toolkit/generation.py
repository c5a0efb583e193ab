"""Greedy generation: what the model says after a prompt.

The decoding loop itself is written once, in :func:`kedsl.toolkit.scoring.greedy_ids`
(batched, left-padded, KV-cached, equal to decoding each prompt alone); this is its text
front end.
"""
from __future__ import annotations

from ..model.handle import LoadedModel
from ..model.loading import ensure_pad_token
from .scoring import greedy_text


def generate(model: LoadedModel, prompts: list[str], max_new_tokens: int = 20, batch_size: int = 16) -> list[str]:
    """Greedy continuations of ``prompts`` (only the new text, special tokens dropped)."""
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    if not prompts:
        return []
    if model.tokenizer.pad_token_id is None:  # load_model guarantees one; in-process models may not
        ensure_pad_token(model.tokenizer)
    return greedy_text(model, prompts, max_new_tokens, batch_size)
