"""The handle every method and metric receives: model + tokenizer + architecture."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import UsageError
from ..registry.presets import ModelShape
from ..registry.specs import ArchitectureSpec
from .fingerprint import fingerprint_state_dict
from .offload import execution_device, is_offloaded, read_weight, resident, state_dict_with_offloaded, write_weight


@dataclass
class LoadedModel:
    """A causal LM ready for editing.

    ``arch`` says where the model keeps its parts, so methods address modules by role
    (``mlp_out(layer)``) and never by hard-coded names.
    """

    model: nn.Module
    tokenizer: Any
    arch: ArchitectureSpec
    ref: str = "<in-process>"  # what the user wrote in `model "..."`
    source: str = "in-process"  # the model source plugin that loaded it
    meta: dict[str, Any] = field(default_factory=dict)  # resolved path, gguf file, ...
    # State a method keeps across sequential edits of this model (AlphaEdit's accumulated
    # keys), by method name; tensors only, saved beside the weights (kedsl_state.safetensors)
    # so a later `apply` on the saved model continues where this one stopped.
    method_state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    # Installed non-weight outcomes (kedsl.model.attachments.Attachment), in install order;
    # installed and removed only through install/uninstall below.
    attachments: list[Any] = field(default_factory=list)

    # -- structure ---------------------------------------------------------------
    def module(self, path: str) -> nn.Module:
        return self.model.get_submodule(path)

    @property
    def num_layers(self) -> int:
        return len(self.module(self.arch.layers))

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        """Where inputs go (for a model split by a device map, accelerate's main device)."""
        return execution_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def layer(self, i: int) -> nn.Module:
        return self.module(self.arch.layers)[i]

    def mlp_out(self, layer: int) -> nn.Module:
        """The MLP output projection of ``layer`` (the weight ROME-family methods edit)."""
        return self.module(self.arch.mlp_out.format(layer))

    def mlp_out_weight_name(self, layer: int) -> str:
        return self.arch.mlp_out.format(layer) + ".weight"

    def mlp_in_weight_names(self, layer: int) -> list[str]:
        """The weights of the MLP's input projections of ``layer`` (those that read the
        block's hidden state: LLaMA's gate and up, GPT-2's c_fc), found by shape under the
        architecture's ``mlp`` path, in module order."""
        path = self.arch.mlp.format(layer)
        out_path = self.arch.mlp_out.format(layer)
        names = []
        for sub, mod in self.module(path).named_modules():
            w = getattr(mod, "weight", None)
            full = f"{path}.{sub}" if sub else path
            if full == out_path or not isinstance(w, torch.Tensor) or w.dim() != 2:
                continue
            d_in = w.shape[0] if self.arch.transposed else w.shape[1]
            if d_in == self.hidden_size:
                names.append(full + ".weight")
        if not names:
            raise AssertionError(f"no MLP input projection found under {path}")  # an architecture spec out of step with its model
        return names

    def parameter(self, name: str) -> nn.Parameter:
        """The parameter itself; an offloaded one (device maps) is a meta placeholder:
        read and write its values through :meth:`read_weight` and :meth:`write_weight`."""
        return self.model.get_parameter(name)

    def read_weight(self, name: str) -> torch.Tensor:
        """The values of parameter ``name`` on the device where they live (offloaded ones
        from accelerate's offload map); not to be changed in place."""
        return read_weight(self.model, name)

    def write_weight(self, name: str, value: torch.Tensor) -> None:
        """Set parameter ``name`` to ``value`` where it lives (cast to its dtype); methods
        write through ``context.weights`` instead, which calls this and keeps the undo."""
        write_weight(self.model, name, value)

    def is_offloaded(self, name: str) -> bool:
        """Whether parameter ``name`` is kept by accelerate's offload (CPU or disk)."""
        return is_offloaded(self.model, name)

    def resident(self, module_path: str) -> contextlib.AbstractContextManager[nn.Module]:
        """The module at ``module_path`` with its real tensors in place for the block
        (an offloaded module's are loaded; see :func:`kedsl.model.offload.resident`)."""
        return resident(self.model, module_path)

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise UsageError(
                f"layer {layer} does not exist: the model has layers 0..{self.num_layers - 1}",
                "choose a layer inside that range",
            )

    @property
    def shape(self) -> ModelShape:
        """What presets are matched by (architecture type, depth, widths, vocabulary)."""
        return ModelShape.from_config(self.model.config)

    @property
    def name(self) -> str | None:
        """The alias the model was loaded by (``smollm2-135m``), else None."""
        return self.meta.get("alias")

    # -- identity ----------------------------------------------------------------
    def fingerprint(self) -> str:
        """SHA-256 over the *weights* (state dict in canonical order: name, dtype, shape,
        bytes), attachments uninstalled for the duration (their digest is separate:
        :func:`kedsl.model.attachments.attachments_digest`)."""
        if not self.attachments:
            return fingerprint_state_dict(state_dict_with_offloaded(self.model))
        with detached(self):
            return fingerprint_state_dict(state_dict_with_offloaded(self.model))

    # -- prompts -----------------------------------------------------------------
    def contextualize(self, prompt_ids: list[int]) -> list[int]:
        """The ids the model is actually fed for a prompt: attachments that work in the
        context (IKE's memory: ``prompt_context(model, ids)``) may prepend to it. Every
        scoring and generation path calls this, so metrics see what users see."""
        ids = list(prompt_ids)
        for a in self.attachments:
            hook = getattr(a, "prompt_context", None)
            if hook is not None:
                ids = hook(self, ids)
        return ids


# -- installing attachments (kedsl.model.attachments.Attachment) through the model's list -------
def install(model: LoadedModel, attachment: Any) -> None:
    """Attach and register ``attachment`` on ``model`` (kept in ``model.attachments``)."""
    if any(a is attachment for a in model.attachments):
        raise RuntimeError(f"{attachment.kind} attachment is already installed")
    attachment.attach(model)
    model.attachments.append(attachment)


def uninstall(model: LoadedModel, attachment: Any) -> None:
    """Detach ``attachment`` and drop it from ``model.attachments``."""
    for i, a in enumerate(model.attachments):
        if a is attachment:
            # Later attachments may sit on top of this one (peft wraps wrapped modules):
            # take them off, remove this one, put them back in order.
            later = model.attachments[i + 1 :]
            for b in reversed(later):
                b.detach(model)
            attachment.detach(model)
            for b in later:
                b.attach(model)
            del model.attachments[i]
            return
    raise RuntimeError(f"{attachment.kind} attachment is not installed on this model")


@contextlib.contextmanager
def detached(model: LoadedModel) -> Iterator[None]:
    """The plain model for the duration (every attachment off, then back on in order)."""
    live = list(model.attachments)
    for a in reversed(live):
        a.detach(model)
    try:
        yield
    finally:
        for a in live:
            a.attach(model)
