"""Training a MEND editor (``kedsl train mend``): the loss of Mitchell et al. 2022, eq. 3.

A step edits the model with a batch of training edits at once (their gradient factors
pooled), then measures the edited model, without changing the model itself
(``torch.func.functional_call``): the edit loss, the NLL of each target after its edit
prompt and its paraphrases, and the locality loss, the KL divergence of the edited model's
next-token distributions from the base model's on the answers of unrelated prompts. The
loss is ``edit_weight * L_edit + locality_weight * L_loc``, minimised over the network and
the step sizes; the base model's weights are frozen. Validation edits each held-back
example alone, as an edit is made at use, and scores the mean of its efficacy (token
accuracy of the target) and locality (share of locality answer tokens whose argmax is
unchanged).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kedsl.toolkit.gradients import answer_accuracy, answer_nll, encode_answers as encode
from kedsl.plugin import LoadedModel, Trainer, TrainingExample

from .config import MENDTrainConfig
from .editor import default_layers, edited_logits, gradient_factors, init_tensors, update_statistics, weight_deltas, shape_key


class MENDTrainer(Trainer):
    config = MENDTrainConfig

    def __init__(self, model: LoadedModel, hparams: MENDTrainConfig) -> None:
        super().__init__(model, hparams)
        self.layers = default_layers(model, hparams.layers)
        params, self._buffers = init_tensors(model, self.layers, hparams.rank, hparams.init_lr, int(hparams.seed or 0))
        self._params = {k: torch.nn.Parameter(v.to(model.device)) for k, v in params.items()}
        self._buffers = {k: v.to(model.device) for k, v in self._buffers.items()}
        for p in model.model.parameters():  # the base model is fixed: no gradients are kept for it
            p.requires_grad_(False)
        model.model.eval()

    def parameters(self) -> dict[str, torch.nn.Parameter]:
        return self._params

    def buffers(self) -> dict[str, torch.Tensor]:
        return self._buffers

    def learning_rates(self, lr: float) -> dict[str, float]:
        if self.hparams.lr_lr is None:
            return {}
        return {name: float(self.hparams.lr_lr) for name in self._params if name.endswith(".lr")}

    def describe(self) -> dict[str, Any]:
        return {"layers": self.layers, "weights": [self.model.mlp_out_weight_name(layer) for layer in self.layers],
                "shapes": sorted({shape_key(self.model, layer) for layer in self.layers})}  # fmt: skip

    def loss(self, batch: list[TrainingExample]) -> tuple[torch.Tensor, dict[str, float]]:
        model, hp = self.model, self.hparams
        factors = gradient_factors(model, encode(model, [(e.prompt, e.target) for e in batch]), self.layers)
        for layer, (x, d) in factors.items():
            update_statistics(self._buffers, shape_key(model, layer), torch.cat([x, d], dim=1))
        deltas = weight_deltas(model, self._params, self._buffers, factors)
        outer = encode(model, [(p, e.target) for e in batch for p in [e.prompt, *e.paraphrases]])
        edit_loss = answer_nll(edited_logits(model, deltas, outer), outer.labels)
        pairs = [pair for e in batch for pair in e.locality]
        loc_loss = torch.zeros((), device=model.device)
        if pairs and hp.locality_weight > 0:
            loc = encode(model, pairs)
            with torch.no_grad():
                base = model.model(input_ids=loc.ids, attention_mask=loc.mask).logits
            loc_loss = _answer_kl(base, edited_logits(model, deltas, loc), loc.labels)
        total = hp.edit_weight * edit_loss + hp.locality_weight * loc_loss
        return total, {"edit": float(edit_loss.detach()), "locality_kl": float(loc_loss.detach())}

    def validate(self, examples: list[TrainingExample]) -> dict[str, float]:
        model = self.model
        efficacy, locality, nll = [], [], []
        for e in examples:
            factors = gradient_factors(model, encode(model, [(e.prompt, e.target)]), self.layers)
            deltas = {k: v.detach() for k, v in weight_deltas(model, self._params, self._buffers, factors).items()}
            edit = encode(model, [(e.prompt, e.target)])
            logits = edited_logits(model, deltas, edit)
            efficacy.append(answer_accuracy(logits, edit.labels)[0])
            nll.append(float(answer_nll(logits, edit.labels)))
            if e.locality:
                loc = encode(model, e.locality)
                before = model.model(input_ids=loc.ids, attention_mask=loc.mask).logits[:, :-1].argmax(-1)
                after = edited_logits(model, deltas, loc)[:, :-1].argmax(-1)
                keep = loc.labels[:, 1:] != -100
                locality.append(float((before[keep] == after[keep]).float().mean()))
        eff = sum(efficacy) / len(efficacy)
        loc_mean = sum(locality) / len(locality) if locality else 1.0
        return {"efficacy": eff, "locality": loc_mean, "edit_loss": sum(nll) / len(nll), "score": (eff + loc_mean) / 2}


def _answer_kl(base: torch.Tensor, edited: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(base || edited) of the next-token distributions that predict the answer tokens."""
    keep = labels[:, 1:] != -100
    p = F.log_softmax(base[:, :-1][keep].float(), dim=-1)
    q = F.log_softmax(edited[:, :-1][keep].float(), dim=-1)
    return (p.exp() * (p - q)).sum(-1).mean()
