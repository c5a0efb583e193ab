"""Greedy generation: what the model says after a prompt."""
from __future__ import annotations

import logging

import torch

from .handle import LoadedModel

log = logging.getLogger(__name__)


@torch.no_grad()
def generate(model: LoadedModel, prompts: list[str], max_new_tokens: int = 20, batch_size: int = 16) -> list[str]:
    """Greedy continuations of ``prompts`` (only the new text, special tokens dropped).

    Prompts are batched with left padding and an attention mask, so every prompt ends at
    the same position and its continuation matches generating it alone.
    """
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    if not prompts:
        return []
    tok = model.tokenizer
    if tok.pad_token_id is None:  # load_model guarantees one; in-process models may not
        from .loading import ensure_pad_token

        ensure_pad_token(tok)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        enc = tok(batch, return_tensors="pt", padding=True, padding_side="left").to(model.device)
        generated = model.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tok.pad_token_id,
            # greedy decoding: drop any sampling defaults the checkpoint ships with
            temperature=None,
            top_p=None,
            top_k=None,
        )
        new_tokens = generated[:, enc["input_ids"].shape[1] :]
        out.extend(tok.batch_decode(new_tokens, skip_special_tokens=True))
    return out
