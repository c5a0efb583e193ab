"""Training a SERAC editor (``kedsl train serac``): the scope classifier and the
counterfactual model's adapter, together.

- Scope: each training edit's prompt is an anchor; its own prompt and paraphrases are in
  its scope, every other prompt of the batch (other edits, their paraphrases, the
  locality prompts) out of it. The loss is the binary cross-entropy of
  ``sigmoid(scale * cos + bias)`` on those pairs. The base model's prompt embeddings do
  not change during training, so each prompt is embedded once and cached.
- Counterfactual: the target's NLL after the edit in context followed by the edit prompt
  or a paraphrase (:func:`kedsl_serac.counterfactual.context_ids`), with the adapter on.
- Validation, per held-back edit alone in memory: the share of its paraphrases in scope
  and of the locality prompts out of it (the mean of the two), and the counterfactual
  model's token accuracy of the target on the paraphrases (on the prompt when it has
  none), and its NLL; the score is the mean of scope and efficacy.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kedsl.plugin import LoadedModel, Trainer, TrainingExample
from kedsl.toolkit.embeddings import embed

from .config import SERACTrainConfig
from .counterfactual import MARKER, GatedAdapter, context_ids, init_adapter, scope_logits


class SERACTrainer(Trainer):
    config = SERACTrainConfig

    def __init__(self, model: LoadedModel, hparams: SERACTrainConfig) -> None:
        super().__init__(model, hparams)
        self.layer = hparams.layer if hparams.layer is not None else min(model.num_layers - 1, max(1, model.num_layers // 7))
        model.check_layer(self.layer)
        self.lora_layers = sorted(set(hparams.lora_layers)) if hparams.lora_layers else list(range(model.num_layers))
        for layer in self.lora_layers:
            model.check_layer(layer)
        gen = torch.Generator().manual_seed(int(hparams.seed or 0))
        d = model.hidden_size
        tensors = {"scope.projection": torch.randn(d, hparams.projection, generator=gen) * d**-0.5,
                   "scope.scale": torch.tensor(10.0), "scope.bias": torch.tensor(-5.0),
                   **init_adapter(model, self.lora_layers, hparams.lora_rank, gen)}  # fmt: skip
        self._params = {k: torch.nn.Parameter(v.to(model.device)) for k, v in tensors.items()}
        for p in model.model.parameters():
            p.requires_grad_(False)
        model.model.eval()
        self.adapter = GatedAdapter(model, {k: v for k, v in self._params.items() if k.startswith("lora.")}, self.lora_layers)
        self.adapter.install()
        self._embedded: dict[str, torch.Tensor] = {}

    def parameters(self) -> dict[str, torch.nn.Parameter]:
        return self._params

    def describe(self) -> dict[str, Any]:
        return {"layer": self.layer, "lora_layers": self.lora_layers, "lora_rank": self.hparams.lora_rank,
                "projection": self.hparams.projection, "marker": MARKER}  # fmt: skip

    def _embeddings(self, prompts: list[str]) -> torch.Tensor:
        todo = [p for p in dict.fromkeys(prompts) if p not in self._embedded]
        if todo:
            rows = [self.model.tokenizer(p, add_special_tokens=True)["input_ids"] for p in todo]
            for p, e in zip(todo, embed(self.model, rows, self.layer)):
                self._embedded[p] = e
        return torch.stack([self._embedded[p] for p in prompts])

    def _counterfactual_nll(self, rows: list[tuple[TrainingExample, str]]) -> tuple[torch.Tensor, list[float]]:
        """Mean NLL of the targets and each row's token accuracy, the edit in context."""
        tok, model = self.model.tokenizer, self.model
        encoded = []
        for e, query in rows:
            prompt_ids = list(tok(query, add_special_tokens=True)["input_ids"])
            ids = context_ids(tok, e.prompt, e.target, prompt_ids)
            target_ids = list(tok(" " + e.target.strip(), add_special_tokens=False)["input_ids"])
            encoded.append((ids + target_ids, len(ids)))
        width = max(len(ids) for ids, _ in encoded)
        batch = torch.zeros((len(encoded), width), dtype=torch.long)
        mask = torch.zeros_like(batch)
        labels = torch.full_like(batch, -100)
        for i, (ids, n_prompt) in enumerate(encoded):
            batch[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
            labels[i, n_prompt : len(ids)] = batch[i, n_prompt : len(ids)]
        batch, mask, labels = batch.to(model.device), mask.to(model.device), labels.to(model.device)
        logits = model.model(input_ids=batch, attention_mask=mask).logits[:, :-1].float()
        gold = labels[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=-100)
        keep = gold != -100
        hits = (logits.argmax(-1) == gold) & keep
        accuracy = [float(h.sum() / k.sum()) for h, k in zip(hits, keep)]
        return nll, accuracy

    def loss(self, batch: list[TrainingExample]) -> tuple[torch.Tensor, dict[str, float]]:
        hp = self.hparams
        anchors = [e.prompt for e in batch]
        candidates: list[str] = []
        owner: list[int] = []
        for i, e in enumerate(batch):
            for p in [e.prompt, *e.paraphrases]:
                candidates.append(p)
                owner.append(i)
            for p, _ in e.locality:
                candidates.append(p)
                owner.append(-1)
        logits = scope_logits(self._embeddings(anchors), self._embeddings(candidates), self._params)
        labels = torch.tensor([[1.0 if o == i else 0.0 for o in owner] for i in range(len(batch))], device=logits.device)
        positives = labels.sum().clamp_min(1.0)
        weights = torch.where(labels > 0, (labels.numel() - positives) / positives, torch.ones_like(labels))  # balance the two classes
        scope = F.binary_cross_entropy_with_logits(logits, labels, weight=weights)
        rows = [(e, q) for e in batch for q in [e.prompt, *e.paraphrases]]
        nll, _ = self._counterfactual_nll(rows)
        total = hp.scope_weight * scope + hp.counterfactual_weight * nll
        return total, {"scope": float(scope.detach()), "counterfactual": float(nll.detach())}

    def validate(self, examples: list[TrainingExample]) -> dict[str, float]:
        inside, outside, efficacy, losses = [], [], [], []
        for e in examples:
            fact = self._embeddings([e.prompt])
            if e.paraphrases:
                inside += (scope_logits(self._embeddings(e.paraphrases), fact, self._params)[:, 0] > 0).float().tolist()
            if e.locality:
                outside += (scope_logits(self._embeddings([p for p, _ in e.locality]), fact, self._params)[:, 0] <= 0).float().tolist()
            nll, acc = self._counterfactual_nll([(e, q) for q in (e.paraphrases or [e.prompt])])
            efficacy += acc
            losses.append(float(nll))
        scope_in = sum(inside) / len(inside) if inside else 1.0
        scope_out = sum(outside) / len(outside) if outside else 1.0
        eff = sum(efficacy) / len(efficacy)
        scope = (scope_in + scope_out) / 2
        return {"in_scope": scope_in, "out_of_scope": scope_out, "efficacy": eff, "counterfactual_loss": sum(losses) / len(losses),
                "score": (scope + eff) / 2}  # fmt: skip
