"""IKE: edits as an in-context memory (see :mod:`kedsl_ike`).

The pieces:

* :class:`IKE` (the method): ``apply`` wraps the requests' facts in an
  :class:`IKEMemory` and installs it with ``context.attach``. No weight changes, so the
  fingerprint stays the same; undo, revert and saving go through the attachment.
* :class:`IKEMemory` (the attachment, kind ``ike_memory``): facts + retrieval settings.
  Its ``prompt_context(model, ids)`` is what :meth:`LoadedModel.contextualize` calls for
  every scored or generated prompt.
* One pool: several memories may be installed (sequential edits, one per edit). The pool
  is the installed memories themselves, in install order: the first attached memory (the
  *leader*) retrieves over the facts of all of them and does the prepending; the others
  pass ids through. So a prompt gets the top-k over every fact and one prefix, and
  removing a memory (undo, revert) removes exactly its facts from the pool. The leader's
  retrieval settings govern the pool (a memory installed later with other settings logs
  a warning).
* Retrieval: a prompt's embedding is the mean over its tokens of one (early) decoder
  layer's output, the first position left out (the attention sink: BOS, or the first
  prompt token when there is none, with outsized activations), standardised per
  dimension by the mean and spread of that layer over a fixed reference text
  (:data:`kedsl.toolkit.embeddings.REFERENCE_TEXTS`), then L2-normalised; similarity is the cosine. Without the
  standardisation, a few outsized dimensions make every pair of prompts look alike
  (cosine ~0.95 on SmolLM2). Facts are embedded by their edit prompt, as queries are,
  with the model that holds the memory. A fact is a candidate when its similarity
  reaches ``threshold``; the ``top_k`` most similar candidates are prepended, the most
  similar last (next to the prompt). No candidate: the ids come back unchanged, so
  unrelated prompts score bit-identically to the unedited model.
* Embeddings are not saved: they depend on the weights (and on other attachments that
  change the forward pass), so each memory computes its facts' embeddings lazily and
  caches them under a token of the model's current state (parameter identities and
  in-place versions, other attachments); a weight edit made after the memory invalidates
  the cache instead of leaving stale keys. The saved content (``state()``) is the facts
  and settings as JSON only: the digest does not depend on device or dtype.
* The request's ``paraphrases`` are deliberately *not* used as retrieval keys: benchmark
  readers fill them with the evaluation's paraphrase prompts (ZsRE ``rephrase``), and
  using them would turn generalization into a lookup.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from kedsl.plugin import Attachment, EditContext, EditOutcome, EditRequest, LoadedModel, Method, UsageError
from kedsl.toolkit.embeddings import Fact, embed, retrieval_token
from kedsl.toolkit.tokens import bos_ids, join

from .config import IKEConfig

log = logging.getLogger(__name__)

#: Version of the saved config layout (``IKEMemory.state``).
STATE_FORMAT = 1
#: Query embeddings kept per leader memory (each metric scores the same prompts again).
QUERY_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Demonstration:
    """A fixed IKE demonstration: a new fact, then a prompt and the answer that follows it.

    ``kind`` as in the paper: ``copy`` (the prompt is the fact's own), ``update`` (a
    paraphrase: answer with the new fact), ``retain`` (an unrelated prompt: answer as
    before, ignoring the fact).
    """

    kind: str
    fact: Fact
    prompt: str
    answer: str


# Written for this plugin (not taken from any benchmark): counterfactual facts, so the
# model learns to follow the stated fact against what it knows, kept short because every
# prompt that retrieves a fact pays for the prefix. The first ``demonstrations`` are used.
DEMONSTRATIONS: tuple[Demonstration, ...] = (
    Demonstration("update", Fact("Who wrote the novel Dune?", "Jane Austen", "Dune"), "Which author wrote Dune?", "Jane Austen"),
    Demonstration("copy", Fact("What is the capital of Norway?", "Bergen", "Norway"), "What is the capital of Norway?", "Bergen"),
    Demonstration(
        "retain", Fact("What sport does Serena Williams play?", "golf", "Serena Williams"), "How many legs does a spider have?", "eight"
    ),
    Demonstration("update", Fact("The Danube flows into the", "Baltic Sea", "Danube"), "The river Danube ends in the", "Baltic Sea"),
)


@dataclass(frozen=True)
class Settings:
    """Retrieval and prompt settings of a memory: the resolved :class:`IKEConfig` (the
    layer a number), saved with the memory."""

    layer: int
    threshold: float
    top_k: int
    demonstrations: int

    @classmethod
    def from_params(cls, params: dict[str, Any], model: LoadedModel) -> "Settings":
        """From resolved parameters (a missing or None value takes the declared default)."""
        cfg = IKEConfig.from_params(params)
        layer = auto_layer(model.num_layers) if cfg.layer == "auto" else int(cfg.layer)
        model.check_layer(layer)
        n_demos = int(cfg.demonstrations)
        if not 0 <= n_demos <= len(DEMONSTRATIONS):
            raise UsageError(f"demonstrations must be in 0..{len(DEMONSTRATIONS)}, got {n_demos}")
        return cls(layer=layer, threshold=float(cfg.threshold), top_k=int(cfg.top_k), demonstrations=n_demos)


def auto_layer(num_layers: int) -> int:
    """An early layer, about a seventh of the depth (at least 1): on SmolLM2 (30 layers)
    layers 2-8 separated paraphrases from unrelated prompts about equally well and the
    middle layer (15) clearly worse (kedsl_ike.PRESETS); an early layer also keeps the
    retrieval forward pass short."""
    return min(num_layers - 1, max(1, num_layers // 7))


def _model_token(model: LoadedModel) -> tuple[Any, ...]:
    return retrieval_token(model, IKEMemory)


# -- the attachment -----------------------------------------------------------------------------
class IKEMemory(Attachment):
    """Edited facts as an in-context memory (see the module docstring)."""

    kind = "ike_memory"
    method = "ike"

    def __init__(self, facts: Sequence[Fact], settings: Settings):
        if not facts:
            raise ValueError("an IKE memory needs at least one fact")
        self.facts: tuple[Fact, ...] = tuple(facts)
        self.settings = settings
        self._attached_to: set[int] = set()  # id() of the LoadedModels it is attached to
        self._fact_cache: tuple[Any, torch.Tensor] | None = None  # ((model token, layer), embeddings)
        # As the leader: the pool's facts and their embeddings, keyed by (model token,
        # layer, the pool's memories); the memories themselves, not their id()s, so a
        # removed one cannot be confused with a new one at the same address.
        self._pool_cache: tuple[Any, list[Fact], torch.Tensor] | None = None
        self._warned = False
        self._query_cache: OrderedDict[tuple[Any, ...], torch.Tensor] = OrderedDict()
        self._query_token: Any = None

    # -- installing ----------------------------------------------------------------------------
    def attach(self, model: LoadedModel) -> None:
        model.check_layer(self.settings.layer)
        leader = _leader(model)
        if leader is not None and leader is not self and leader.settings != self.settings and not self._warned:
            self._warned = True
            log.warning(
                "IKE memory with settings %s joins a pool led by one with %s: the pool retrieves with the latter",
                asdict(self.settings),
                asdict(leader.settings),
            )
        self._attached_to.add(id(model))

    def detach(self, model: LoadedModel) -> None:
        self._attached_to.discard(id(model))

    def attached_to(self, model: LoadedModel) -> bool:
        return id(model) in self._attached_to

    # -- content -------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        config = {
            "format": STATE_FORMAT,
            "facts": [asdict(f) for f in self.facts],
            "settings": asdict(self.settings),
        }
        return {}, config

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> "IKEMemory":
        if config.get("format") != STATE_FORMAT:
            raise ValueError(f"IKE memory config format {config.get('format')!r} is not {STATE_FORMAT}")
        facts = [Fact(**f) for f in config["facts"]]
        return cls(facts, Settings(**config["settings"]))

    # -- retrieval -----------------------------------------------------------------------------
    def fact_embeddings(self, model: LoadedModel, layer: int, model_token: Any = None) -> torch.Tensor:
        """This memory's facts embedded at ``layer`` with ``model`` as it is now (cached).
        ``model_token``: :func:`_model_token` if the caller has just computed it."""
        token = (model_token if model_token is not None else _model_token(model), layer)
        if self._fact_cache is None or self._fact_cache[0] != token:
            rows = [model.tokenizer(f.prompt, add_special_tokens=True)["input_ids"] for f in self.facts]
            self._fact_cache = (token, embed(model, rows, layer, token))
        return self._fact_cache[1]

    def _query_embedding(self, model: LoadedModel, ids: list[int], layer: int, token: Any) -> torch.Tensor:
        if token != self._query_token:
            self._query_cache.clear()
            self._query_token = token
        key = (layer, tuple(ids))
        hit = self._query_cache.get(key)
        if hit is None:
            hit = embed(model, [ids], layer, token)[0]
            self._query_cache[key] = hit
            if len(self._query_cache) > QUERY_CACHE_SIZE:
                self._query_cache.popitem(last=False)
        else:
            self._query_cache.move_to_end(key)
        return hit

    def retrieve(self, model: LoadedModel, ids: list[int]) -> list[tuple[float, Fact]]:
        """The pool's facts to prepend for the prompt ``ids``: (similarity, fact), at most
        ``top_k`` with similarity >= ``threshold``, least similar first."""
        pool = _pool(model)
        cfg = self.settings
        token = _model_token(model)
        key = (token, cfg.layer, tuple(pool))
        if self._pool_cache is None or self._pool_cache[0] != key:
            facts = [f for m in pool for f in m.facts]
            keys = torch.cat([m.fact_embeddings(model, cfg.layer, token) for m in pool])
            self._pool_cache = (key, facts, keys)
        _, facts, keys = self._pool_cache
        sims = keys @ self._query_embedding(model, ids, cfg.layer, token)
        hits = [(float(sims[i]), i) for i in range(len(facts)) if float(sims[i]) >= cfg.threshold]
        hits.sort(key=lambda x: (-x[0], x[1]))  # most similar first; ties: earlier fact first
        chosen = hits[: cfg.top_k]
        return [(s, facts[i]) for s, i in reversed(chosen)]

    def prompt_context(self, model: LoadedModel, ids: list[int]) -> list[int]:
        """The ids to feed for a prompt: unchanged unless stored facts are similar enough;
        then the demonstrations and the retrieved facts come first (after a BOS)."""
        if _leader(model) is not self:
            return ids  # the leader prepends for the whole pool
        retrieved = self.retrieve(model, ids)
        if not retrieved:
            return ids
        prefix = prefix_text([f for _, f in retrieved], self.settings.demonstrations)
        tok = model.tokenizer
        prefix_ids = list(tok(prefix, add_special_tokens=False)["input_ids"])
        front = bos_ids(tok)
        if front and list(ids[: len(front)]) == front:
            return front + prefix_ids + list(ids[len(front) :])
        return prefix_ids + list(ids)


def prefix_text(facts: Sequence[Fact], demonstrations: int) -> str:
    """IKE's context for retrieved ``facts`` (least similar first): the demonstrations, each
    retrieved fact but the last as a copy demonstration, then the last fact's "New Fact"
    line; the prompt follows on the next line.

    The prompt starts on a new line rather than after a "Prompt:" label so its own
    tokens (tokenized alone, without a leading space) read naturally after the prefix.
    """
    if not facts:
        raise ValueError("prefix_text needs at least one fact")
    blocks = [f"New Fact: {d.fact.text()}\n{join(d.prompt, d.answer)[0]}\n\n" for d in DEMONSTRATIONS[:demonstrations]]
    blocks += [f"New Fact: {f.text()}\n{f.text()}\n\n" for f in facts[:-1]]
    blocks.append(f"New Fact: {facts[-1].text()}\n")
    return "".join(blocks)


def _pool(model: LoadedModel) -> list[IKEMemory]:
    """The IKE memories attached to ``model``, in install order."""
    return [a for a in model.attachments if isinstance(a, IKEMemory) and a.attached_to(model)]


def _leader(model: LoadedModel) -> IKEMemory | None:
    pool = _pool(model)
    return pool[0] if pool else None


# -- the method ---------------------------------------------------------------------------------
class IKE(Method):
    """In-context knowledge editing: the facts become an :class:`IKEMemory`."""

    def touches(self, model: LoadedModel, params: dict[str, Any]) -> list[str]:
        Settings.from_params(params, model)  # validates the layer
        return []  # no weight changes

    def apply(self, model: LoadedModel, requests: list[EditRequest], params: dict[str, Any], context: EditContext) -> EditOutcome:
        settings = Settings.from_params(params, model)
        for r in requests:
            if not r.target:
                raise UsageError(
                    f"IKE cannot {r.kind} {r.subject!r} without a target (an erasure's target is its refusal)",
                    "IKE writes the target into the context as a new fact: give one",
                )
        memory = IKEMemory([Fact(r.prompt, r.target, r.subject) for r in requests], settings)
        context.attach(model, memory)
        pool = _pool(model)
        # Embed now: the first scored prompt would otherwise pay for it, and a model the
        # layer cannot be read from fails here rather than inside a metric.
        memory.fact_embeddings(model, pool[0].settings.layer)
        pool_facts = sum(len(m.facts) for m in pool)
        log.info("IKE: %d fact(s) in memory; the pool holds %d", len(memory.facts), pool_facts)
        return context.outcome(facts=len(memory.facts), pool_facts=pool_facts, **asdict(settings))
