"""When bf16 autocast pays off on this machine.

On CPUs with AMX or AVX512-BF16, bf16 matrix products run several times faster than
float32 (measured about 980 against 146 GFLOP/s on an AMX machine). Without them PyTorch
emulates bf16 and autocast is far *slower* than float32 (measured on an AVX2-only CPU: a
Linear forward at 12.5 against 73 GFLOP/s, forward+backward 45x slower). So every
"bf16" switch in kedsl defaults to ``None`` = :func:`bf16_is_fast`. ``KEDSL_BF16=1`` or
``0`` overrides the detection.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def bf16_is_fast() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16)."""
    forced = os.environ.get("KEDSL_BF16")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes", "on")
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return any(f in flags for f in NATIVE_BF16_FLAGS)
    return False  # unknown CPU: float32 is never the slow choice by much


def resolve_bf16(flag: bool | None) -> bool:
    """``flag`` as given, or the detection when it is ``None`` (auto)."""
    return bf16_is_fast() if flag is None else bool(flag)


@contextlib.contextmanager
def linear_weights_as(net: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Inside the block every ``nn.Linear`` of ``net`` holds a ``dtype`` copy of its weight
    and bias (the originals are put back on exit, ties included). Under bf16 autocast a
    linear layer casts its frozen float32 weight to bf16 on *every* call (autocast caches
    casts only of weights that require grad); an optimisation loop over a frozen model
    paid ~15% of its time for those copies. Autocast's own cast gives the same bf16
    values, so results are unchanged. Costs one ``dtype`` copy of the linear weights."""
    saved: list[tuple[nn.Module, str, nn.Parameter]] = []
    copies: dict[int, nn.Parameter] = {}  # one copy per shared (tied) tensor
    try:
        for mod in net.modules():
            if not isinstance(mod, nn.Linear):
                continue
            for name in ("weight", "bias"):
                p = getattr(mod, name, None)
                if p is None or p.dtype == dtype or p.is_meta:  # meta: offloaded, loaded by its hooks
                    continue
                if id(p) not in copies:
                    copies[id(p)] = nn.Parameter(p.detach().to(dtype), requires_grad=False)
                saved.append((mod, name, p))
                setattr(mod, name, copies[id(p)])
        yield
    finally:
        for mod, name, p in reversed(saved):
            setattr(mod, name, p)


@contextlib.contextmanager
def float32_master(module: nn.Module, name: str = "weight") -> Iterator[torch.Tensor]:
    """The tensor to optimise when training ``module.<name>``: the parameter itself when
    it is float32; otherwise a float32 master copy that the module reads, cast to the
    parameter's dtype, at every forward (the gradient flows back through the cast). A
    bf16 weight stepped directly loses every step smaller than its rounding (about 0.4%
    of its value); the master keeps them. The parameter itself is not changed: the
    caller writes the trained values back (cast once) through the weight journal."""
    p = getattr(module, name)
    if p.dtype == torch.float32:
        yield p
        return
    master = p.detach().float().requires_grad_(True)
    dtype = p.dtype

    def cast(mod: nn.Module, args: tuple) -> None:
        setattr(mod, name, master.to(dtype))

    del module._parameters[name]
    handle = module.register_forward_pre_hook(cast)
    try:
        yield master
    finally:
        handle.remove()
        module.__dict__.pop(name, None)
        module.register_parameter(name, p)
