"""The ``lora`` and ``adalora`` edit methods (see :mod:`kedsl_lora`).

An edit trains a fresh adapter on the live model (every installed adapter stays active,
so sequential edits build on each other), with peft doing all LoRA work: injection
(``PeftModel``/``add_adapter``), the forward, AdaLoRA's rank allocation
(``update_and_allocate``) and orthogonal regularisation (``AdaLoraModel.forward``), and
the capture of the trained weights (``get_peft_model_state_dict``). The trained adapter is
then taken off and installed again from its captured content as the edit's attachment:
the same path a saved model's adapter takes when it is loaded.
"""
from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import peft
import torch
import torch.nn.functional as F
from peft import PeftConfig
from peft.tuners.adalora.layer import RankAllocator
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from kedsl.plugin import EditContext, EditOutcome, EditRequest, LoadedModel, Method, UsageError
from kedsl.toolkit.objectives import masked_target_loss
from kedsl.toolkit.tokens import encode_pair

from .adapters import (
    AdaLoraAdapter,
    LoraAdapter,
    PeftAdapter,
    capture_adapter,
    host_model,
    install_adapter,
    is_adapter_key,
    new_adapter_name,
    remove_adapter,
)
from .config import AdaLoRAConfig, AdapterConfig, LoRAConfig

log = logging.getLogger(__name__)

#: Architecture roles an adapter can be put on (``modules`` parameter).
ROLES = ("mlp_out", "mlp", "attn")


#: The measurements behind the llama presets (kedsl_lora.LORA_PRESETS / ADALORA_PRESETS):
#: SmolLM2-135M-Instruct in float32, ZsRE (../shared/data/zsre_eval_head.json), single
#: edits, `OMP_NUM_THREADS=1 kedsl bench ... --offset O --limit N --metrics
#: efficacy,generalization,locality --param ...`; (method, records, changed params) ->
#: (efficacy, generalization, locality, seconds per edit on a shared 2-core CPU). Params not
#: named are the defaults of the time: rank 8 / init 12 -> target 8, alpha 32, 40 or 60 steps.
SWEEP = {
    ("lora", "0-9", "layers=20 lr=5e-3 nll_tol=0.01"): (1.000, 1.000, 0.538, 11.9),
    ("lora", "0-9", "layers=16..23 lr=1e-3 nll_tol=0.01"): (1.000, 1.000, 0.733, 23.7),
    ("lora", "0-9", "layers=20 lr=1e-3 steps=60 nll_tol=0.01"): (1.000, 1.000, 0.783, 40.2),
    ("lora", "0-9", "layers=20 lr=5e-4 steps=80 nll_tol=0.01"): (1.000, 1.000, 0.850, 69.5),
    ("lora", "0-9", "layers=20 lr=1e-3 steps=60 nll_tol=0.1"): (1.000, 0.967, 0.867, 14.6),
    ("lora", "0-9", "layers=20 lr=5e-4 steps=100 nll_tol=0.1"): (1.000, 0.967, 0.883, 33.6),
    ("lora", "0-9", "layers=8 lr=1e-3 steps=60 nll_tol=0.1"): (0.957, 0.860, 0.890, 35.1),
    ("lora", "0-9", "layers=20 lr=1e-3 steps=60 nll_tol=0.3 (preset)"): (1.000, 0.967, 0.917, 12.2),
    ("lora", "10-29", "layers=20 lr=1e-3 steps=60 nll_tol=0.3 (preset)"): (1.000, 0.962, 0.871, 13.0),
    ("adalora", "0-9", "layers=20 lr=1e-3 steps=60 nll_tol=0.1"): (0.180, 0.165, 1.000, 34.8),
    ("adalora", "0-9", "layers=20 lr=5e-3 steps=60 nll_tol=0.1"): (1.000, 0.871, 0.967, 35.3),
    ("adalora", "0-9", "layers=20 lr=1e-2 steps=60 nll_tol=0.1"): (1.000, 0.886, 0.967, 27.9),
    ("adalora", "0-9", "layers=18..22 lr=1e-2 steps=60 nll_tol=0.1"): (1.000, 1.000, 0.883, 7.3),
    ("adalora", "0-9", "layers=20 lr=1e-2 steps=60 nll_tol=0.3 (preset)"): (1.000, 0.890, 0.967, 12.8),
    ("adalora", "10-29", "layers=20 lr=1e-2 steps=60 nll_tol=0.3 (preset)"): (1.000, 0.848, 0.843, 11.0),
}


# -- where adapters go ------------------------------------------------------------------------------
def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def _linear_paths(root: nn.Module, prefix: str) -> list[str]:
    """Paths of the linear maps under ``root`` as in the plain model: an installed peft
    layer counts as the module it wraps (its lora_A/lora_B are not targets)."""
    out: list[str] = []
    for name, child in root.named_children():
        path = f"{prefix}.{name}"
        if isinstance(child, BaseTunerLayer):
            if _is_linear(child.get_base_layer()):
                out.append(path)
        elif _is_linear(child):
            out.append(path)
        else:
            out.extend(_linear_paths(child, path))
    return out


def target_modules(model: LoadedModel, layers: list[int] | None, roles: tuple[str, ...] | list[str]) -> list[str]:
    """Module paths for ``roles`` in ``layers`` (None: every layer), from the architecture's
    role templates, never from hard-coded names."""
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise UsageError(
            f"unknown module role(s) {', '.join(map(repr, unknown)) or '(none given)'} for an adapter",
            "use modules=[...] with any of: " + ", ".join(ROLES),
        )
    chosen = list(range(model.num_layers)) if layers is None else list(dict.fromkeys(layers))
    paths: list[str] = []
    for layer in chosen:
        model.check_layer(layer)
        for role in roles:
            if role == "mlp_out":
                paths.append(model.arch.mlp_out.format(layer))
            else:
                base = (model.arch.mlp if role == "mlp" else model.arch.attn).format(layer)
                paths.extend(_linear_paths(model.module(base), base))
    return list(dict.fromkeys(paths))


def _target_labels(model: LoadedModel, requests: list[EditRequest]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids, attention mask and causal-LM labels (-100 except on the target tokens): with
    these, the model's own loss is :func:`masked_target_loss` (the tests check it)."""
    encs = [encode_pair(model.tokenizer, r.prompt, r.target) for r in requests]
    width = max(len(e.input_ids) for e in encs)
    ids = torch.zeros((len(encs), width), dtype=torch.long, device=model.device)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(encs):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids, device=model.device)
        mask[i, :n] = 1
        labels[i, e.prompt_len : n] = ids[i, e.prompt_len : n]
    return ids, mask, labels


# -- the methods ----------------------------------------------------------------------------------------
class _AdapterEdit(Method):
    """Shared apply(): inject, train the new adapter only, capture, reinstall as attachment."""

    config_class: ClassVar[type[AdapterConfig]] = LoRAConfig
    attachment_class: ClassVar[type[PeftAdapter]] = LoraAdapter

    def peft_config(self, cfg: AdapterConfig, targets: list[str], model: LoadedModel) -> PeftConfig:
        raise NotImplementedError

    def loss(self, model: LoadedModel, requests: list[EditRequest], name: str) -> tuple[torch.Tensor, float]:
        """(the loss to minimise, the target NLL it contains)."""
        loss = masked_target_loss(model, requests)
        return loss, float(loss.detach())

    def begin(self, model: LoadedModel, cfg: AdapterConfig, name: str) -> None:
        """Set up per-edit training state once the adapter is installed."""

    def after_step(self, model: LoadedModel, step: int) -> None:
        """Called after each optimiser step (before gradients are cleared)."""

    def end(self, model: LoadedModel) -> None:
        """Drop per-edit training state."""

    def settings(self, model: LoadedModel, params: dict[str, Any]) -> tuple[AdapterConfig, list[str]]:
        cfg = self.config_class.from_params(params)
        return cfg, target_modules(model, cfg.layers, tuple(cfg.modules))

    def touches(self, model: LoadedModel, params: dict[str, Any]) -> list[str]:
        """The weights the adapter adapts (they change only in a ``merged`` save)."""
        _, targets = self.settings(model, params)
        return [f"{t}.weight" for t in targets]

    def apply(self, model: LoadedModel, requests: list[EditRequest], params: dict[str, Any], context: EditContext) -> EditOutcome:
        cfg, targets = self.settings(model, params)
        config = self.peft_config(cfg, targets, model)
        peft_type = self.attachment_class.peft_type
        name = new_adapter_name()
        net = model.model
        flags = [(p, p.requires_grad) for p in net.parameters()]
        was_training = net.training
        start = time.perf_counter()
        nlls: list[float] = []  # the target NLL before each step (and after the last)
        taken = 0
        with torch.random.fork_rng():  # seeded init and dropout; the caller's stream stays as it was
            torch.manual_seed(context.seed)
            install_adapter(model, config, name, targets)
            try:
                for p in net.parameters():
                    p.requires_grad_(False)
                trainable = [p for n, p in net.named_parameters() if is_adapter_key(n, name) and ".ranknum." not in n]
                for p in trainable:
                    p.requires_grad_(True)
                net.eval()  # the model's own dropout off: edits are deterministic
                if cfg.dropout > 0:  # the adapter's dropout is the one asked for
                    for m in net.modules():
                        if isinstance(m, BaseTunerLayer) and name in m.lora_dropout:
                            m.lora_dropout[name].train()
                self.begin(model, cfg, name)
                opt = torch.optim.Adam(trainable, lr=cfg.lr)
                with torch.enable_grad():
                    for step in range(cfg.steps):
                        opt.zero_grad(set_to_none=True)
                        loss, nll = self.loss(model, requests, name)
                        nlls.append(nll)
                        if nll < cfg.nll_tol:
                            break
                        loss.backward()
                        opt.step()
                        taken = step + 1
                        self.after_step(model, taken)
                tensors, saved_config = capture_adapter(model, peft_type, name)
            finally:
                self.end(model)
                remove_adapter(model, peft_type, name)
                for p, flag in flags:
                    p.requires_grad_(flag)
                    p.grad = None
                net.train(was_training)
        adapter = self.attachment_class(saved_config, tensors)
        context.attach(model, adapter)
        with torch.no_grad():  # what the installed attachment gives (the captured adapter, not the live one)
            nll_end = float(masked_target_loss(model, requests))
        seconds = time.perf_counter() - start
        log.info("%s on %d module(s): %d steps, target NLL %.3f -> %.3f, %.1fs", type(self).__name__.lower(), len(targets), taken, nlls[0], nll_end, seconds)
        return context.outcome(
            modules=len(targets), steps=taken, loss_start=nlls[0], loss_end=nll_end, seconds=seconds,
            adapter_parameters=sum(t.numel() for t in tensors.values()),
        )  # fmt: skip


class LoRA(_AdapterEdit):
    """LoRA (Hu et al. 2021): a low-rank update B·A·(alpha/rank) beside each target module,
    trained with FT-M's objective (teacher-forced CE on the target tokens)."""

    config_class = LoRAConfig
    attachment_class = LoraAdapter

    def peft_config(self, cfg: AdapterConfig, targets: list[str], model: LoadedModel) -> PeftConfig:
        return peft.LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=targets,
            fan_in_fan_out=model.arch.transposed,  # GPT-2's Conv1D stores (in, out)
            bias="none",
            task_type="CAUSAL_LM",
            inference_mode=False,
        )


class AdaLoRA(_AdapterEdit):
    """AdaLoRA (Zhang et al. 2023): SVD-shaped adapters P·Λ·Q whose rank budget peft's
    RankAllocator moves between modules while training; the loss adds peft's orthogonal
    regulariser on P and Q (computed in ``AdaLoraModel.forward``)."""

    config_class = AdaLoRAConfig
    attachment_class = AdaLoraAdapter

    def peft_config(self, cfg: AdapterConfig, targets: list[str], model: LoadedModel) -> PeftConfig:
        assert isinstance(cfg, AdaLoRAConfig)
        if cfg.target_rank > cfg.init_rank:
            raise UsageError(
                f"target_rank ({cfg.target_rank}) is above init_rank ({cfg.init_rank})",
                "AdaLoRA only removes rank: choose target_rank <= init_rank",
            )
        if cfg.tinit >= cfg.steps - cfg.tfinal:
            raise UsageError(
                f"tinit ({cfg.tinit}) + tfinal ({cfg.tfinal}) leave no rank-allocation steps out of {cfg.steps}",
                "choose tinit + tfinal < steps",
            )
        return peft.AdaLoraConfig(
            init_r=cfg.init_rank,
            target_r=cfg.target_rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=targets,
            fan_in_fan_out=model.arch.transposed,
            tinit=cfg.tinit,
            tfinal=cfg.tfinal,
            deltaT=cfg.delta_t,
            beta1=cfg.beta1,
            beta2=cfg.beta2,
            orth_reg_weight=cfg.orth_reg_weight,
            total_step=cfg.steps,
            task_type="CAUSAL_LM",
            inference_mode=False,
        )

    def begin(self, model: LoadedModel, cfg: AdapterConfig, name: str) -> None:
        # What AdaLoraModel.__init__ does for its trainable adapter; done here because an
        # adapter added to an existing host (sequential edits) does not get it.
        tuner = host_model(model, "ADALORA").base_model
        tuner.trainable_adapter_name = name
        tuner.rankallocator = RankAllocator(tuner.model, tuner.peft_config[name], name)

    def loss(self, model: LoadedModel, requests: list[EditRequest], name: str) -> tuple[torch.Tensor, float]:
        ids, mask, labels = _target_labels(model, requests)
        # AdaLoraModel.forward adds the orthogonal regulariser to the model's own loss.
        out = host_model(model, "ADALORA").base_model(input_ids=ids, attention_mask=mask, labels=labels)
        with torch.no_grad():  # the target NLL alone decides when to stop
            logits = out.logits[:, :-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        return out.loss, float(nll)

    def after_step(self, model: LoadedModel, step: int) -> None:
        host_model(model, "ADALORA").base_model.update_and_allocate(step)

    def end(self, model: LoadedModel) -> None:
        tuner = host_model(model, "ADALORA").base_model
        for attr in ("rankallocator", "trainable_adapter_name"):
            tuner.__dict__.pop(attr, None)
