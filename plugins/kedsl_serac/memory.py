"""The ``serac`` method and its edit memory (see :mod:`kedsl_serac`).

An edit puts its facts in a :class:`SERACMemory` (the attachment, kind ``serac_memory``),
which carries the trained editor's tensors with it, so a saved model needs nothing else.
Several memories may be installed (sequential edits): the leader (the first one
installed, or when it goes, the next) holds the adapter's hooks and decides for every prompt over the facts of all of them; removing a memory removes exactly its facts. For each prompt the model is fed
(``prompt_context``, called by every scoring and generation path), the leader embeds it
with the model, scores it against every stored edit and, when the best edit's score
is above the margin, returns the counterfactual model's context for that edit; otherwise
the prompt's ids unchanged, which the base model then computes exactly as without SERAC.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from kedsl.plugin import Attachment, EditContext, EditOutcome, EditRequest, LoadedModel, Method, UsageError, load_editor
from kedsl.toolkit.embeddings import Fact, embed, retrieval_token

from .config import SERACConfig
from .counterfactual import GatedAdapter, context_ids, scope_logits

log = logging.getLogger(__name__)

STATE_FORMAT = 1


@dataclass(frozen=True)
class Settings:
    """What a memory needs of its editor: the embedding layer, the adapter's layers, the
    decision margin, and where the editor came from (for the record)."""

    layer: int
    lora_layers: tuple[int, ...]
    margin: float
    editor_sha256: str


class SERACMemory(Attachment):
    kind = "serac_memory"
    method = "serac"

    def __init__(self, facts: Sequence[Fact], tensors: dict[str, torch.Tensor], settings: Settings):
        self.facts = list(facts)
        self.tensors = {k: v.detach().float().cpu() for k, v in tensors.items()}
        self.settings = settings
        self._model: LoadedModel | None = None
        self._adapter: GatedAdapter | None = None
        self._fact_cache: tuple[Any, torch.Tensor] | None = None

    # -- installing ----------------------------------------------------------------------------
    def attach(self, model: LoadedModel) -> None:
        self._model = model
        if not any(m._adapter is not None for m in _pool(model) if m is not self):  # no leader yet: this one leads
            device = model.device
            self._adapter = GatedAdapter(model, {k: v.to(device) for k, v in self.tensors.items() if k.startswith("lora.")}, self.settings.lora_layers)
            self._adapter.install()

    def detach(self, model: LoadedModel) -> None:
        if self._adapter is not None:
            self._adapter.remove()
            self._adapter = None
            heir = next((m for m in _pool(model) if m is not self), None)
            if heir is not None:  # the next memory takes the adapter over
                heir._model = None
                heir.attach(model)
        self._model = None

    def attached_to(self, model: LoadedModel) -> bool:
        return self._model is model

    # -- content ---------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        config = {
            "format": STATE_FORMAT,
            "facts": [asdict(f) for f in self.facts],
            "settings": {**asdict(self.settings), "lora_layers": list(self.settings.lora_layers)},
        }
        return dict(self.tensors), config

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> "SERACMemory":
        if config.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown serac_memory format {config.get('format')!r}")
        s = config["settings"]
        settings = Settings(layer=int(s["layer"]), lora_layers=tuple(int(x) for x in s["lora_layers"]), margin=float(s["margin"]),
                            editor_sha256=str(s["editor_sha256"]))  # fmt: skip
        return cls([Fact(**f) for f in config["facts"]], tensors, settings)

    # -- deciding the scope ---------------------------------------------------------------------------
    def _token(self, model: LoadedModel) -> tuple[Any, ...]:
        return retrieval_token(model, SERACMemory)

    def fact_embeddings(self, model: LoadedModel, token: Any) -> torch.Tensor:
        if self._fact_cache is None or self._fact_cache[0] != token:
            rows = [model.tokenizer(f.prompt, add_special_tokens=True)["input_ids"] for f in self.facts]
            self._fact_cache = (token, embed(model, rows, self.settings.layer, token))
        return self._fact_cache[1]

    def in_scope(self, model: LoadedModel, ids: Sequence[int]) -> tuple[Fact, float] | None:
        """The stored fact this prompt falls under (over the whole pool), or None."""
        token = self._token(model)
        query = embed(model, [list(ids)], self.settings.layer, token)
        best: tuple[Fact, float] | None = None
        for memory in _pool(model):
            if not memory.facts:
                continue
            logits = scope_logits(query, memory.fact_embeddings(model, token), self.tensors)[0]
            i = int(logits.argmax())
            if best is None or float(logits[i]) > best[1]:
                best = (memory.facts[i], float(logits[i]))
        return best if best is not None and best[1] > self.settings.margin else None

    def prompt_context(self, model: LoadedModel, ids: list[int]) -> list[int]:
        if self._adapter is None:
            return ids  # the leader (the memory holding the adapter) decides for the whole pool
        found = self.in_scope(model, ids)
        if found is None:
            return ids
        fact, _ = found
        return context_ids(model.tokenizer, fact.prompt, fact.target, ids)


def _pool(model: LoadedModel) -> list[SERACMemory]:
    return [a for a in model.attachments if isinstance(a, SERACMemory) and a.attached_to(model)]


class SERAC(Method):
    """The method class named by kedsl_serac's MethodSpec: one memory per edit (a batch's
    requests in one memory)."""

    def __init__(self) -> None:
        self._editors: dict[tuple[str, int], tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}

    def _editor(self, model: LoadedModel, cfg: SERACConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if not cfg.editor:
            raise UsageError("serac needs a trained editor", 'give editor="DIR" (train one with `kedsl train serac --model ... --data ... --out DIR`)')
        key = (str(Path(cfg.editor).expanduser().absolute()), id(model))
        if key not in self._editors:
            self._editors[key] = load_editor(cfg.editor, "serac", model)
        return self._editors[key]

    def touches(self, model: LoadedModel, params: dict[str, Any]) -> list[str]:
        self._editor(model, SERACConfig.from_params(params))
        return []  # the weights stay as they are: the outcome is a memory

    def apply(self, model: LoadedModel, requests: list[EditRequest], params: dict[str, Any], context: EditContext) -> EditOutcome:
        cfg = SERACConfig.from_params(params, context.seed)
        tensors, config = self._editor(model, cfg)
        trainer = config["trainer"]
        settings = Settings(layer=int(trainer["layer"]), lora_layers=tuple(int(x) for x in trainer["lora_layers"]),
                            margin=float(cfg.margin), editor_sha256=str(config["sha256"]))  # fmt: skip
        start = time.perf_counter()
        memory = SERACMemory([Fact(r.prompt, r.target, r.subject) for r in requests], tensors, settings)
        context.attach(model, memory)
        memory.fact_embeddings(model, memory._token(model))  # now, not inside the first metric
        seconds = time.perf_counter() - start
        pool = sum(len(m.facts) for m in _pool(model))
        log.info("serac: %d fact(s) in memory, %d in the pool, %.2fs", len(requests), pool, seconds)
        return context.outcome(facts=len(requests), pool_facts=pool, editor=str(Path(cfg.editor).expanduser().absolute()),
                               editor_sha256=config["sha256"], editor_train_runs=config.get("train_runs", []),
                               editor_database=config.get("database"), seconds=seconds)  # fmt: skip

