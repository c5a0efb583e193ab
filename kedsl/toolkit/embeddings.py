"""Prompt embeddings from the model itself: the mean over a prompt's tokens of one decoder
layer's output, standardised per dimension and L2-normalised, so that cosine similarity
says how alike two prompts are to the model. Retrieval-based editors use them (IKE's
memory, SERAC's scope classifier); nothing is downloaded.

The first position is left out of the mean: it is the attention sink (BOS, or the
prompt's first token when there is none), whose activations are outsized and say nothing
about the prompt. The standardisation uses the per-dimension mean and spread of the
layer's output over :data:`REFERENCE_TEXTS`: without it, a few dimensions with outsized
activations dominate every mean-pooled state and unrelated prompts have cosine ~0.95
(measured on SmolLM2).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..model.handle import LoadedModel
from .activations import forward_until, make_batch, pad_id, trace
from .tokens import join

#: Prompts embedded per forward pass.
EMBED_BATCH = 32

#: Written for kedsl (no benchmark text): varied everyday sentences and questions whose
#: hidden states give the per-dimension mean and spread that embeddings are standardised by.
REFERENCE_TEXTS: tuple[str, ...] = (
    "The weather was cold and windy all week.",
    "She opened the window to let in some fresh air.",
    "How many people live in the largest city of the country?",
    "Water boils at a lower temperature at high altitude.",
    "Who painted the ceiling of the old chapel?",
    "The committee will meet again next Tuesday afternoon.",
    "What is the best way to learn a new language?",
    "He plays the violin in a small orchestra.",
    "The train to the airport leaves every twenty minutes.",
    "Which river runs through the middle of the town?",
    "Photosynthesis converts light into chemical energy.",
    "My grandmother grew tomatoes and beans in her garden.",
    "When did the bridge first open to traffic?",
    "The company reported higher profits this quarter.",
    "Please remember to bring your passport and ticket.",
    "What language is spoken in the northern provinces?",
    "The museum holds a large collection of ancient coins.",
    "A triangle has three sides and three angles.",
    "Who is the author of this famous poem?",
    "The children built a sandcastle on the beach.",
    "Which team won the championship last season?",
    "The recipe calls for two cups of flour and one egg.",
    "Where was the famous scientist born?",
    "The software update fixed several security problems.",
    "The band released its first album in the spring.",
    "What is the main ingredient of this traditional dish?",
    "The mountain village can only be reached on foot.",
    "Which company manufactures this kind of aircraft?",
    "The doctor advised him to get more sleep.",
    "In what year was the university founded?",
    "Heavy rain caused flooding in the valley.",
    "The novel tells the story of two brothers at sea.",
    "Who was the first president of the club?",
    "The library is closed on public holidays.",
    "What position does he play on the football team?",
    "Electric cars are becoming more common in cities.",
    "The film was shot in a small studio outside the capital.",
    "Which instrument does the singer usually play?",
    "The old castle was rebuilt after the fire.",
    "What family does this species of bird belong to?",
)


@torch.no_grad()
def layer_states(model: LoadedModel, rows: Sequence[Sequence[int]], layer: int) -> list[torch.Tensor]:
    """Per row, decoder layer ``layer``'s output at the row's tokens but the first, float32
    on the CPU. The first position is left out: it is the attention sink (BOS, or the
    prompt's first token when there is none), whose activations are outsized and say
    nothing about the prompt. The forward pass stops after ``layer``."""
    path = f"{model.arch.layers}.{layer}"
    out: list[torch.Tensor] = []
    for s in range(0, len(rows), EMBED_BATCH):
        chunk = [list(r) for r in rows[s : s + EMBED_BATCH]]
        batch = make_batch(chunk, pad_id(model.tokenizer), model.device)
        with trace(model, [path], inputs=False, outputs=True, stop_after=path) as rec:
            forward_until(model, batch)
        h = rec.outputs[path].float().cpu()
        for i, n in enumerate(batch.lengths):
            start = batch.offsets[i] + (1 if n > 1 else 0)
            out.append(h[i, start : batch.offsets[i] + n])
    return out


# Per model (weakly keyed by its nn.Module): (state token, layer, (mean, std)).
_REFERENCE_STATS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[Any, int, tuple[torch.Tensor, torch.Tensor]]]" = (
    weakref.WeakKeyDictionary()
)


def reference_stats(model: LoadedModel, layer: int, token: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation of ``layer``'s output over the tokens of
    :data:`REFERENCE_TEXTS`, cached until ``token`` (what the caller says the forward pass
    depends on; default: the parameters' identities and in-place versions) changes."""
    token = token if token is not None else parameter_token(model)
    hit = _REFERENCE_STATS.get(model.model)
    if hit is not None and hit[0] == token and hit[1] == layer:
        return hit[2]
    rows = [model.tokenizer(t, add_special_tokens=True)["input_ids"] for t in REFERENCE_TEXTS]
    states = torch.cat(layer_states(model, rows, layer))
    stats = (states.mean(0), states.std(0).clamp_min(1e-6))
    _REFERENCE_STATS[model.model] = (token, layer, stats)
    return stats


def embed(model: LoadedModel, rows: Sequence[Sequence[int]], layer: int, token: Any = None) -> torch.Tensor:
    """``(len(rows), hidden)`` float32, unit length: each row's mean over its tokens (the
    first excluded, see :func:`layer_states`) of decoder layer ``layer``'s output,
    standardised per dimension by :func:`reference_stats` (``token`` as there)."""
    mean, std = reference_stats(model, layer, token)
    pooled = torch.stack([h.mean(0) for h in layer_states(model, rows, layer)])
    return torch.nn.functional.normalize((pooled - mean) / std, dim=-1)


def parameter_token(model: LoadedModel) -> tuple[Any, ...]:
    """Changes whenever a parameter is replaced or written in place (``_version``)."""
    return tuple((id(p), p._version) for p in model.model.parameters())


def retrieval_token(model: LoadedModel, own: type) -> tuple[Any, ...]:
    """Changes whenever what an embedding forward pass computes may change: a parameter
    replaced or written in place, or an attachment other than the memories of type
    ``own`` (which leave that pass alone) installed or removed. Memories key their cached
    embeddings by it."""
    others = tuple(id(a) for a in model.attachments if not isinstance(a, own))
    return parameter_token(model), others


# -- memories of facts, retrieved by their prompts' embeddings (IKE, SERAC) --------------------
@dataclass(frozen=True)
class Fact:
    """One edited fact in a memory: ``prompt`` (the edit prompt, the retrieval key) -> ``target``."""

    prompt: str
    target: str
    subject: str = ""

    def text(self) -> str:
        """The fact as one sentence, joined by the tokenization rule of the metrics."""
        return join(self.prompt, self.target)[0]
