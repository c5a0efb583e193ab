"""Fingerprints: SHA-256 over tensors in one canonical order, the identity of a model's
weights and of an attachment's content."""
from __future__ import annotations

import hashlib
from typing import Any

import torch


def hash_tensors(h: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Feed ``tensors`` to the hash ``h`` in canonical order: name, dtype, shape, bytes."""
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        # view as bytes: works for every dtype, bf16 included
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def fingerprint_state_dict(state: dict[str, torch.Tensor]) -> str:
    """The SHA-256 of a state dict (:func:`hash_tensors`), as hex."""
    h = hashlib.sha256()
    hash_tensors(h, state)
    return h.hexdigest()
