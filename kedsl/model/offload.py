"""Weights placed by accelerate's device maps (``model "..." with device_map=...``).

A model split over devices keeps each module's weights on its own device, and methods
read and write them there. A module offloaded to the CPU (while the model runs on a GPU)
or to disk holds meta tensors: accelerate's hook on it loads the real values from its
``weights_map`` before each forward and drops them after. Such a weight is read from
that map and written into the loader's in-memory ``state_dict``, which the loader
consults before its files; the offload folder on disk is never changed, so an undo that
writes the original back, and a fresh load, give the same weights.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn


def _offload_hook(module: nn.Module) -> Any | None:
    """The accelerate hook that offloads ``module``'s own tensors, if any."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        if getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None:
            return h
    return None


def _split(name: str) -> tuple[str, str]:
    module, _, tensor = name.rpartition(".")
    return module, tensor


def _holding_hook(net: nn.Module, name: str) -> tuple[Any, str]:
    """The hook holding meta tensor ``name``'s values, and the tensor's name in its map."""
    module, tensor = _split(name)
    hook = _offload_hook(net.get_submodule(module))
    if hook is None:
        raise RuntimeError(f"{name} is on the meta device and no accelerate hook holds its values")
    return hook, tensor


def is_offloaded(net: nn.Module, name: str) -> bool:
    """Whether parameter ``name`` lives in an offload map (CPU or disk) rather than in its module."""
    module, _ = _split(name)
    return net.get_parameter(name).is_meta and _offload_hook(net.get_submodule(module)) is not None


def read_weight(net: nn.Module, name: str) -> torch.Tensor:
    """The values of parameter ``name`` wherever they live (do not change them in place)."""
    p = net.get_parameter(name)
    if not p.is_meta:
        return p.detach()
    hook, tensor = _holding_hook(net, name)
    return hook.weights_map[tensor]


def write_weight(net: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set parameter ``name`` to ``value`` (cast to its dtype) where it lives."""
    p = net.get_parameter(name)
    with torch.no_grad():
        if not p.is_meta:
            p.copy_(value.to(device=p.device, dtype=p.dtype))
            return
        hook, tensor = _holding_hook(net, name)
        stored = hook.weights_map[tensor]
        loader = hook.weights_map.dataset  # PrefixedDataset over the model's loader
        key = hook.weights_map.prefix + tensor
        new = value.to(device=stored.device, dtype=p.dtype).clone()
        if hasattr(loader, "state_dict"):  # OffloadedWeightsLoader: in memory first, then its files
            loader.state_dict[key] = new
        else:  # a plain mapping (cpu_offload)
            loader[key] = new


def state_dict_with_offloaded(net: nn.Module) -> dict[str, torch.Tensor]:
    """``net.state_dict()`` with every offloaded tensor's real values in place of its meta
    placeholder (what a fingerprint hashes)."""
    state = net.state_dict()
    for key, t in state.items():
        if t.is_meta:
            hook, tensor = _holding_hook(net, key)
            state[key] = hook.weights_map[tensor]
    return state


def execution_device(net: nn.Module) -> torch.device:
    """Where inputs go: for a model dispatched by a device map, accelerate's main device
    (the first accelerator in the map, else the CPU); otherwise the first parameter's."""
    placement = getattr(net, "hf_device_map", None)
    if placement:
        on_devices = [d for d in placement.values() if d not in ("cpu", "disk", "meta")]
        if not on_devices:
            return torch.device("cpu")
        return torch.device("cuda", on_devices[0]) if isinstance(on_devices[0], int) else torch.device(on_devices[0])
    return next(net.parameters()).device


@contextlib.contextmanager
def resident(net: nn.Module, module_path: str) -> Iterator[nn.Module]:
    """Inside the block the module at ``module_path`` holds its real tensors on its
    execution device, as an unsplit model's would (for training it: an offloaded weight is
    re-loaded from the map at every forward, so a trained copy would be lost). On exit the
    tensors are meta again; write trained values back with :func:`write_weight`."""
    from accelerate.utils import set_module_tensor_to_device

    module = net.get_submodule(module_path)
    hook = _offload_hook(module)
    if hook is None:
        yield module
        return
    names = [n for n, _ in module.named_parameters(recurse=False)] + ([n for n, _ in module.named_buffers(recurse=False)] if hook.offload_buffers else [])
    for n in names:
        set_module_tensor_to_device(module, n, hook.execution_device, value=hook.weights_map[n])
    hook.offload = False
    try:
        yield module
    finally:
        hook.offload = True
        for n in names:
            set_module_tensor_to_device(module, n, "meta")
