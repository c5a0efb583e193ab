"""SERAC's two trained parts, shared by training and use.

- The **scope classifier**: a prompt's embedding by the base model itself
  (:func:`kedsl.toolkit.embeddings.embed`), projected by a learned matrix and normalised;
  a prompt is in a stored edit's scope when ``scale * cos(query, edit) + bias`` (both
  learned) is above the margin (0: the classifier's own even odds).
- The **counterfactual model**: the base model with a low-rank adapter on the MLP output
  projections, fed the edit in its context (:func:`context_ids`: a marker, the edit's
  prompt and target, then the prompt). The adapter is active only on the rows of a batch
  that begin with the marker (:class:`GatedAdapter`), so every other row is computed by
  the unchanged base model, bit for bit.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from kedsl.plugin import LoadedModel
from kedsl.toolkit.activations import cache_argument, pad_id
from kedsl.toolkit.tokens import bos_ids, join

#: What begins the context of an in-scope prompt (and switches the adapter on for its row).
MARKER = "[SERAC edit]"


def marker_ids(tokenizer: Any) -> list[int]:
    return list(tokenizer(MARKER, add_special_tokens=False)["input_ids"])


def context_ids(tokenizer: Any, edit_prompt: str, edit_target: str, prompt_ids: Sequence[int]) -> list[int]:
    """The ids the counterfactual model is fed: the marker and the edit (prompt and target,
    joined as the metrics join them), a new line, then the prompt (after a BOS, if the
    prompt has one)."""
    prefix = list(tokenizer(f"{MARKER} {join(edit_prompt, edit_target)[0]}\n", add_special_tokens=False)["input_ids"])
    front = bos_ids(tokenizer)
    ids = list(prompt_ids)
    if front and ids[: len(front)] == front:
        return front + prefix + ids[len(front) :]
    return prefix + ids


def marked_rows(input_ids: torch.Tensor, marker: list[int], pad: int, bos: list[int]) -> torch.Tensor:
    """Per row, whether it begins with the marker (after any left padding and a BOS)."""
    out = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    n = len(marker)
    for r, row in enumerate(input_ids.tolist()):
        at = 0
        while at < len(row) and row[at] == pad and row[at : at + n] != marker:
            at += 1
        if bos and row[at : at + len(bos)] == bos:
            at += len(bos)
        out[r] = row[at : at + n] == marker
    return out


class GatedAdapter:
    """A low-rank adapter ``W x + (B A x) * scale`` on the MLP output projections of
    ``layers``, applied only to the rows that :func:`marked_rows` finds. A forward
    pre-hook on the model reads the rows of each new input; a decoding step fed only new
    tokens (a cache is passed) keeps the rows of the input it continues."""

    def __init__(self, model: LoadedModel, tensors: dict[str, torch.Tensor], layers: Sequence[int], scale: float = 1.0):
        self.model, self.tensors, self.layers, self.scale = model, tensors, list(layers), scale
        tok = model.tokenizer
        self.marker, self.pad, self.bos = marker_ids(tok), pad_id(tok), bos_ids(tok)
        self.cache_kw = cache_argument(model.model)
        self.rows: torch.Tensor | None = None
        self.handles: list[Any] = []

    def install(self) -> None:
        if self.handles:
            raise RuntimeError("the SERAC adapter is installed already")
        self.handles.append(self.model.model.register_forward_pre_hook(self._read_rows, with_kwargs=True))
        for layer in self.layers:
            self.handles.append(self.model.mlp_out(layer).register_forward_hook(self._hook(layer)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.rows = None

    def _read_rows(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            self.rows = None
            return
        cache = kwargs.get(self.cache_kw) if self.cache_kw else None
        continuing = cache is not None and _cached_length(cache) > 0
        if continuing and self.rows is not None and self.rows.shape[0] == ids.shape[0]:
            return  # a decoding step: the same rows as the input it continues
        self.rows = marked_rows(ids.detach().cpu(), self.marker, self.pad, self.bos).to(ids.device)

    def _hook(self, layer: int) -> Any:
        def add(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            rows = self.rows
            if rows is None or not bool(rows.any()) or rows.shape[0] != out.shape[0]:
                return out
            idx = rows.nonzero().squeeze(1)
            x = args[0].index_select(0, idx)
            a, b = self.tensors[f"lora.{layer}.A"], self.tensors[f"lora.{layer}.B"]
            delta = (x.to(a.dtype) @ a.T @ b.T) * self.scale
            return out.index_copy(0, idx, out.index_select(0, idx) + delta.to(out.dtype))

        return add


def _cached_length(cache: Any) -> int:
    length = getattr(cache, "get_seq_length", None)
    if callable(length):
        return int(length())
    try:
        return int(cache[0][0].shape[-2])
    except (TypeError, IndexError, AttributeError):
        return 0


def init_adapter(model: LoadedModel, layers: Sequence[int], rank: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A fresh adapter: ``A`` small and random, ``B`` zero (the adapter starts as a no-op)."""
    out = {}
    for layer in layers:
        w = model.parameter(model.mlp_out_weight_name(layer))
        d_out, d_in = (w.shape[1], w.shape[0]) if model.arch.transposed else (w.shape[0], w.shape[1])
        out[f"lora.{layer}.A"] = torch.randn(rank, d_in, generator=gen) * d_in**-0.5
        out[f"lora.{layer}.B"] = torch.zeros(d_out, rank)
    return out


def scope_logits(queries: torch.Tensor, edits: torch.Tensor, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(n_queries, n_edits)``: ``scale * cos(P q, P e) + bias`` for embeddings ``q``, ``e``."""
    p = tensors["scope.projection"]
    q = torch.nn.functional.normalize(queries @ p, dim=-1)
    e = torch.nn.functional.normalize(edits @ p, dim=-1)
    return tensors["scope.scale"] * (q @ e.T) + tensors["scope.bias"]
