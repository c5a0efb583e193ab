"""LoRA and AdaLoRA adapters as kedsl attachments, installed and removed through peft.

peft keeps every adapter of one type in the same wrapped modules: a LoRA layer holds one
(A, B) pair per adapter name and adds the active ones to its base module's output. So
all adapters of one peft type on one model share one :class:`peft.PeftModel` (a *host*)
that wraps the live model in place (``LoadedModel.model`` stays the same object). Each
attachment adds its adapter to the host under a fresh name, loads its weights with
``set_peft_model_state_dict`` and deletes the adapter again on detach. A module whose last
adapter is deleted gets its original module object back, and the host goes away with its
last adapter, so a model with every attachment detached has exactly its original modules,
parameter names, ``requires_grad`` flags and attributes (``fingerprint()`` relies on it).

The host is kept on the model itself (``model.model.__dict__[_HOSTS_ATTR]``, a plain
attribute, never a submodule: it must not show up in ``state_dict``), so any handle on the
same network finds it and it dies with the network.

An attachment's content is the adapter exactly as peft saves it: the tensors of
``get_peft_model_state_dict`` (keys ``base_model.model.<module>.lora_A.weight`` ...) and the
peft config as a JSON dict. ``save``/``load`` use peft's adapter format, so a saved
``attachments/NN-lora_adapter`` folder loads with ``PeftModel.from_pretrained``.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from peft import PeftConfig, PeftModel, get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from torch import nn

from kedsl.plugin import Attachment, LoadedModel, UsageError

log = logging.getLogger(__name__)

#: Where a network keeps its peft hosts while it holds kedsl adapters.
_HOSTS_ATTR = "_kedsl_peft_hosts"
#: peft's prefix of the keys of a PeftModel's state dict (and of saved adapter files).
PEFT_PREFIX = "base_model.model."
_MISSING = object()
_counter = itertools.count(1)


def new_adapter_name() -> str:
    """A fresh peft adapter name. Fixed width, so no name is a substring of another: peft's
    AdaLoRA rank allocator and state-dict filters match adapter names as substrings."""
    return f"kedsl{next(_counter):08d}"


@dataclass
class _Host:
    """The PeftModel holding one peft type's adapters on one network, in install order."""

    peft_model: PeftModel
    names: list[str] = field(default_factory=list)


@dataclass
class _Hosts:
    by_type: dict[str, _Host] = field(default_factory=dict)
    # The network's own `peft_config` attribute before the first host (peft's tuner sets it).
    peft_config_before: Any = _MISSING


def _hosts(net: nn.Module) -> _Hosts | None:
    return net.__dict__.get(_HOSTS_ATTR)


def peft_type_of(config: PeftConfig) -> str:
    return str(getattr(config.peft_type, "value", config.peft_type))


def host_model(model: LoadedModel, peft_type: str) -> PeftModel:
    """The PeftModel that holds ``model``'s adapters of ``peft_type`` (for training code)."""
    hosts = _hosts(model.model)
    if hosts is None or peft_type not in hosts.by_type:
        raise RuntimeError(f"no {peft_type} adapter is installed on this model")
    return hosts.by_type[peft_type].peft_model


def adapter_names(layer: BaseTunerLayer) -> list[str]:
    """The adapters a peft LoRA/AdaLoRA layer holds."""
    return list(layer.lora_A.keys())


def layers_holding(net: nn.Module, name: str) -> list[tuple[str, BaseTunerLayer]]:
    """(module path, peft layer) for every module that holds adapter ``name``."""
    return [(p, m) for p, m in net.named_modules() if isinstance(m, BaseTunerLayer) and name in adapter_names(m)]


def is_adapter_key(key: str, name: str) -> bool:
    """Whether a state-dict key belongs to adapter ``name`` (peft's own naming rule)."""
    return f".{name}." in key or key.endswith(f".{name}")


def modules_of(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The module paths an adapter's saved tensors adapt (``base_model.model.<path>.lora_X...``)."""
    paths = set()
    for key in tensors:
        path = key.removeprefix(PEFT_PREFIX)
        cut = path.find(".lora_")
        if cut < 0:
            raise ValueError(f"{key!r} is not a LoRA adapter tensor")
        paths.add(path[:cut])
    return sorted(paths)


# -- installing and removing adapters ------------------------------------------------------------
def install_adapter(
    model: LoadedModel,
    config: PeftConfig,
    name: str,
    targets: list[str],
    tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Inject adapter ``name`` (``config``) into the modules ``targets`` of the live model and,
    when given, load its ``tensors``. Every installed adapter stays active; the base
    parameters keep their ``requires_grad`` flags; the caller's random stream is untouched
    (peft draws the initial A/B, which loaded tensors then replace)."""
    net = model.model
    peft_type = peft_type_of(config)
    hosts = _hosts(net)
    host = hosts.by_type.get(peft_type) if hosts is not None else None
    _check_free(net, targets, host, peft_type)
    if hosts is None:
        hosts = _Hosts(peft_config_before=net.__dict__.get("peft_config", _MISSING))
        net.__dict__[_HOSTS_ATTR] = hosts
    flags = [(p, p.requires_grad) for p in net.parameters()]
    tp = getattr(net.config, "pretraining_tp", _MISSING) if hasattr(net, "config") else _MISSING
    added = False
    try:
        with torch.random.fork_rng(), _quiet_peft(), contextlib.ExitStack() as loaded:
            # peft makes an adapter where its base weight lives: an offloaded (meta) weight
            # is loaded for the injection, so the adapter is real, on the execution device
            for t in targets:
                if model.is_offloaded(f"{t}.weight"):
                    loaded.enter_context(model.resident(t))
            if host is None:
                # A new tuner adopts a `peft_config` it finds on the network (the other
                # peft type's host sets one) and would share that dict: hide it meanwhile.
                shown = net.__dict__.pop("peft_config", _MISSING)
                try:
                    peft_model = PeftModel(net, config, adapter_name=name)
                except BaseException:
                    if shown is not _MISSING:
                        net.__dict__["peft_config"] = shown
                    raise
                host = hosts.by_type[peft_type] = _Host(peft_model)
            else:
                host.peft_model.add_adapter(name, config)
            host.names.append(name)
            added = True
            if tensors is not None:
                _load_tensors(host.peft_model, name, tensors)
    except BaseException:
        if added:
            remove_adapter(model, peft_type, name)
        elif not hosts.by_type:
            _drop_hosts(net, hosts)
        raise
    finally:
        # peft freezes the base model on its first injection and PeftModel resets
        # `pretraining_tp`: installing must not change anything of the plain model.
        for p, flag in flags:
            p.requires_grad_(flag)
        if tp is not _MISSING:
            net.config.pretraining_tp = tp
    _activate(net, hosts)


@contextlib.contextmanager
def _quiet_peft() -> Any:
    """Silence warnings that are expected on this path and say nothing to a user: the
    deprecation of an attribute PeftModel probes, and the AdaLoRA rank_pattern (keyed by
    lora_E parameters) that LoRA's pattern check does not recognise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*")
        warnings.filterwarnings("ignore", message=r"The following rank_pattern keys did not match.*")
        yield


def remove_adapter(model: LoadedModel, peft_type: str, name: str) -> None:
    """Delete adapter ``name``; modules left without adapters get their original module back."""
    net = model.model
    hosts = _hosts(net)
    host = hosts.by_type.get(peft_type) if hosts is not None else None
    if host is None or name not in host.names:
        raise RuntimeError(f"adapter {name} ({peft_type}) is not installed on this model")
    holding = layers_holding(net, name)
    if name in host.peft_model.peft_config:
        host.peft_model.delete_adapter(name)
    host.names.remove(name)
    for path, layer in holding:
        if name in adapter_names(layer):
            raise RuntimeError(f"peft did not delete adapter {name} from {path}")
        if not adapter_names(layer):
            parent, _, child = path.rpartition(".")
            # `base_layer` is the module object peft wrapped: the original comes back.
            setattr(net.get_submodule(parent) if parent else net, child, layer.base_layer)
    if not host.names:
        del hosts.by_type[peft_type]
        if net.__dict__.get("peft_config") is host.peft_model.peft_config:
            remaining = next(iter(hosts.by_type.values()), None)
            if remaining is not None:
                net.__dict__["peft_config"] = remaining.peft_model.peft_config
    if not hosts.by_type:
        _drop_hosts(net, hosts)
    else:
        _activate(net, hosts)


def _drop_hosts(net: nn.Module, hosts: _Hosts) -> None:
    net.__dict__.pop(_HOSTS_ATTR, None)
    if hosts.peft_config_before is _MISSING:
        net.__dict__.pop("peft_config", None)
    else:
        net.__dict__["peft_config"] = hosts.peft_config_before


def _activate(net: nn.Module, hosts: _Hosts) -> None:
    """Make every installed adapter active (in install order) and frozen in every layer.

    Done per layer rather than with the tuner's ``set_adapter``: LoRA and AdaLoRA layers
    share a base class, so one host's ``set_adapter`` would switch the other's layers too.
    New peft layers are created in training mode; they take their base module's mode.
    """
    order = {n: i for host in hosts.by_type.values() for i, n in enumerate(host.names)}
    for _, layer in net.named_modules():
        if not isinstance(layer, BaseTunerLayer):
            continue
        names = adapter_names(layer)
        ours = [n for n in names if n in order]
        if not ours:
            continue
        if len(ours) != len(names):
            raise RuntimeError(f"a peft layer holds adapters kedsl did not install: {sorted(set(names) - set(ours))}")
        layer.set_adapter(sorted(ours, key=order.__getitem__), inference_mode=True)
        layer.train(layer.base_layer.training)


def _check_free(net: nn.Module, targets: list[str], host: _Host | None, peft_type: str) -> None:
    """peft cannot stack adapters of different types on one module: refuse clearly."""
    ours = set(host.names) if host is not None else set()
    for path in targets:
        try:
            module = net.get_submodule(path)
        except AttributeError:
            raise UsageError(f"the model has no module {path} to put an adapter on") from None
        if isinstance(module, BaseTunerLayer) and not set(adapter_names(module)) <= ours:
            raise UsageError(
                f"{path} already carries an adapter of another kind; a {peft_type} adapter cannot be stacked on it",
                "give this edit other layers or modules (the method's `layers`/`modules` parameters)",
            )


def _load_tensors(peft_model: PeftModel, name: str, tensors: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(peft_model, tensors, adapter_name=name)
    # AdaLoRA's ranknum is recomputed, never saved; everything else of the adapter must load.
    missing = [k for k in result.missing_keys if is_adapter_key(k, name) and ".ranknum." not in k]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"adapter tensors do not fit the injected adapter: missing {missing}, unexpected {result.unexpected_keys}")


def capture_adapter(model: LoadedModel, peft_type: str, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Adapter ``name``'s tensors (as peft saves them) and its config as a JSON dict."""
    peft_model = host_model(model, peft_type)
    config = peft_model.peft_config[name]
    # Only this adapter's entries: peft's own filter would keep the other peft type's.
    own = {k: v for k, v in peft_model.state_dict().items() if is_adapter_key(k, name)}
    tensors = get_peft_model_state_dict(peft_model, state_dict=own, adapter_name=name, save_embedding_layers=False)
    config.inference_mode = True  # a captured adapter is only ever used, not trained further
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}, config_to_dict(config)


# -- configs as JSON ---------------------------------------------------------------------------------
def config_to_dict(config: PeftConfig) -> dict[str, Any]:
    """The peft config as plain JSON (sets as sorted lists): one spelling whether it comes
    from training or from a saved adapter_config.json, so digests agree."""
    raw = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    return json.loads(json.dumps(raw))


def config_from_dict(data: dict[str, Any]) -> PeftConfig:
    """A fresh peft config object (peft mutates configs while injecting: never reuse one)."""
    return PeftConfig.from_peft_type(**json.loads(json.dumps(data)))


# -- the attachments -----------------------------------------------------------------------------------
class PeftAdapter(Attachment):
    """An adapter trained by an edit; installed with peft on top of the unchanged weights."""

    peft_type: ClassVar[str] = ""

    def __init__(self, config: dict[str, Any], tensors: dict[str, torch.Tensor]):
        if config.get("peft_type") != self.peft_type:
            raise ValueError(f"a {self.kind} needs a {self.peft_type} peft config, got {config.get('peft_type')!r}")
        if not tensors:
            raise ValueError(f"a {self.kind} needs its adapter tensors")
        self.config = config
        self.tensors = tensors
        self._name: str | None = None  # the peft adapter name while attached

    @property
    def targets(self) -> list[str]:
        """The module paths this adapter adapts."""
        return modules_of(self.tensors)

    # -- installing ------------------------------------------------------------------------------------
    def attach(self, model: LoadedModel) -> None:
        if self._name is not None:
            raise RuntimeError(f"this {self.kind} is already attached")
        name = new_adapter_name()
        install_adapter(model, config_from_dict(self.config), name, self.targets, self.tensors)
        self._name = name

    def detach(self, model: LoadedModel) -> None:
        if self._name is None:
            raise RuntimeError(f"this {self.kind} is not attached")
        remove_adapter(model, self.peft_type, self._name)
        self._name = None

    # -- content -----------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return dict(self.tensors), json.loads(json.dumps(self.config))

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> "PeftAdapter":
        return cls(config, tensors)

    def save(self, directory: Path) -> None:
        """peft's adapter format: adapter_config.json (peft's writer) and
        adapter_model.safetensors, written the way ``PeftModel.save_pretrained`` writes it."""
        from safetensors.torch import save_file

        tensors, config = self.state()
        config_from_dict(config).save_pretrained(str(directory))
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def load(cls, directory: Path) -> "PeftAdapter":
        if not (directory / CONFIG_NAME).is_file() or not (directory / SAFETENSORS_WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{directory} is not a peft adapter folder ({CONFIG_NAME}, {SAFETENSORS_WEIGHTS_NAME})")
        config = PeftConfig.from_pretrained(str(directory))
        tensors = load_peft_weights(str(directory), device="cpu")
        return cls(config_to_dict(config), dict(tensors))

    def merged_deltas(self, model: LoadedModel) -> dict[str, torch.Tensor]:
        """peft's own delta (``get_delta_weight``) of every adapted module, keyed by the plain
        model's weight name; attached for the duration when it is not installed (audit's
        revert of a merged save rebuilds the adapter from the store)."""
        if self._name is not None:
            return self._deltas(model)
        self.attach(model)
        try:
            return self._deltas(model)
        finally:
            self.detach(model)

    def _deltas(self, model: LoadedModel) -> dict[str, torch.Tensor]:
        assert self._name is not None
        with torch.no_grad():
            return {
                f"{path}.weight": layer.get_delta_weight(self._name).detach().to("cpu", copy=True)
                for path, layer in layers_holding(model.model, self._name)
            }


class LoraAdapter(PeftAdapter):
    """A LoRA adapter (peft ``LoraConfig``) made by the ``lora`` method."""

    kind = "lora_adapter"
    method = "lora"
    peft_type = "LORA"


class AdaLoraAdapter(PeftAdapter):
    """An AdaLoRA adapter (peft ``AdaLoraConfig``, ranks as allocated in training) made by
    the ``adalora`` method."""

    kind = "adalora_adapter"
    method = "adalora"
    peft_type = "ADALORA"
