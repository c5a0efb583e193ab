"""WISE's side memory at one MLP output projection, its router, and the attachment that
holds one edit's share of it.

Side memory. The side memory is ``W + Δ`` where ``W`` is the module's own weight (the
main memory, never changed) and ``Δ`` (``(d_out, d_in)``, as a linear map) is merged from
the installed :class:`WiseMemory` attachments: each holds one edit's trained values on
its shard's mask. The edits of one shard add up (each was trained on top of the memory
the earlier ones left); the shards are merged with TIES (Yadav et al. 2023): each shard
keeps its ``density`` largest entries by magnitude, every entry takes the sign with the
larger total, and the shards that agree with it are averaged there. One shard alone is
taken as it is. ``Δ`` is recomputed from the attachments whenever they change (a shard
gains an edit: added to its sum; loses one: its sum rebuilt in install order), so the
memory is always the same function of the installed set and undo/revert are exact.

Router. At every token position with input ``a`` the module's own output is ``o = a Wᵀ
(+ b)`` and the side memory's is ``o + a Δᵀ``. The activation score is ``|a Δᵀ| / |o|``:
how much the side memory would change the output there, relative to it. Positions whose
score exceeds the threshold (``act_ratio`` x the lowest score an installed edit reached
on its own inputs) get the side memory's output; the others keep the module's output.
WISE routes a whole input by one score; routing per position gives the same answer on
the positions an edit trains (its prompt's last token and its target's) and needs no
memory of earlier forward passes, so KV-cached generation routes exactly as the
teacher-forced pass does. A forward pass that routes nothing gets the module's output
tensor back untouched: bit-identical pass-through.

Memory. An attachment keeps ``mask_ratio`` x ``d_out`` x ``d_in`` float32 values (its
mask is regenerated from its seed); the live memory keeps one dense sum per shard and the
merged ``Δ``. So memory grows with the number of edits by each edit's masked values
(0.7 MB per edit at SmolLM2's layer with the default ratio), which exact per-edit revert
needs; the side memory itself does not grow.
"""
from __future__ import annotations

import contextlib
import logging
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn

from kedsl.plugin import Attachment, ModelError

if TYPE_CHECKING:
    from kedsl.plugin import LoadedModel

log = logging.getLogger(__name__)

KIND = "wise_memory"
METHOD = "wise"
FORMAT = 1  # version of the saved config/tensors layout


def shard_mask(shape: tuple[int, int], ratio: float, seed: int) -> torch.Tensor:
    """The boolean mask of a shard: each entry in with probability ``ratio``, drawn from
    its own generator (the same seed gives the same mask on every machine)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand(shape, generator=gen) < ratio


def mask_seed(seed: int, layer: int, shard: int) -> int:
    """The mask seed of ``shard`` at ``layer`` for a run seeded ``seed``."""
    return (int(seed) * 1_000_003 + int(layer) * 10_007 + int(shard)) % (2**63 - 1)


def ties_merge(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES-merging of task vectors: trim each to its ``density`` largest entries by
    magnitude, elect each entry's sign by the larger total, average the agreeing ones.
    One vector is returned as it is."""
    if len(deltas) == 1:
        return deltas[0]
    trimmed = []
    for d in deltas:
        keep = max(1, int(round(density * d.numel())))
        if keep >= d.numel():
            trimmed.append(d)
            continue
        cut = d.abs().flatten().kthvalue(d.numel() - keep + 1).values
        trimmed.append(torch.where(d.abs() >= cut, d, torch.zeros_like(d)))
    stacked = torch.stack(trimmed)
    sign = torch.sign(stacked.sum(dim=0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    count = agree.sum(dim=0).clamp(min=1)
    return (stacked * agree).sum(dim=0) / count


class SideMemory:
    """The side memory and router at one module: the installed attachments, their merged
    ``Δ`` and threshold, and the forward hook that routes (see the module doc). While an
    edit trains, :meth:`training` replaces routing by the trial memory at every position."""

    def __init__(self) -> None:
        self._owners: dict[int, "WiseMemory"] = {}  # install order
        self._shards: dict[int, torch.Tensor] = {}  # shard -> sum of its edits' deltas
        self._delta: torch.Tensor | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._trial: Callable[[], torch.Tensor] | None = None
        self._bypassed = False

    def __len__(self) -> int:
        return len(self._owners)

    @property
    def hooked(self) -> bool:
        return self._handle is not None

    def edits_in(self, shard: int) -> int:
        return sum(1 for o in self._owners.values() if o.shard == shard)

    def shards(self) -> list[int]:
        return sorted({o.shard for o in self._owners.values()})

    # -- contents -------------------------------------------------------------------------
    def add(self, owner: "WiseMemory", module: nn.Module) -> None:
        if id(owner) in self._owners:
            raise RuntimeError("this WISE memory is already installed")
        self._owners[id(owner)] = owner
        dense = owner.dense()
        self._shards[owner.shard] = self._shards[owner.shard] + dense if owner.shard in self._shards else dense
        self._delta = None
        self._hook(module)

    def remove(self, owner: "WiseMemory") -> None:
        if self._owners.pop(id(owner), None) is None:
            raise RuntimeError("this WISE memory is not installed")
        # rebuilt in install order: the same sum as if the owner had never been added
        members = [o for o in self._owners.values() if o.shard == owner.shard]
        if members:
            total = members[0].dense()
            for o in members[1:]:
                total = total + o.dense()
            self._shards[owner.shard] = total
        else:
            del self._shards[owner.shard]
        self._delta = None
        if not self._owners and self._trial is None and self._handle is not None:
            self._handle.remove()
            self._handle = None

    def delta(self) -> torch.Tensor | None:
        """The merged ``Δ`` (float32, ``(d_out, d_in)``), None with nothing installed."""
        if self._delta is None and self._shards:
            density = list(self._owners.values())[-1].density
            self._delta = ties_merge([self._shards[s] for s in sorted(self._shards)], density)
        return self._delta

    def lowest_score(self) -> float | None:
        """The lowest score an installed edit reached on its own inputs, None with none installed."""
        return min((o.score for o in self._owners.values()), default=None)

    def threshold(self) -> float:
        """``act_ratio`` (of the latest edit) x the lowest installed edit's own score."""
        owners = list(self._owners.values())
        return owners[-1].act_ratio * min(o.score for o in owners)

    # -- training -------------------------------------------------------------------------
    def training(self, module: nn.Module, delta: Callable[[], torch.Tensor]) -> "_Training":
        """A context in which every position of every forward gets ``o + a delta()ᵀ``."""
        return _Training(self, module, delta)

    @contextlib.contextmanager
    def bypassed(self) -> Iterator[None]:
        """Inside the block the module answers alone (what the main memory says)."""
        self._bypassed = True
        try:
            yield
        finally:
            self._bypassed = False

    # -- the hook -------------------------------------------------------------------------
    def _hook(self, module: nn.Module) -> None:
        if self._handle is None:
            self._handle = module.register_forward_hook(self._apply)

    def _apply(self, module: nn.Module, args: tuple, output: Any) -> Any:
        x = args[0]
        if not isinstance(output, torch.Tensor) or x.dim() != 3:
            raise RuntimeError(f"WISE expects (batch, tokens, features) at its module, got input {tuple(x.shape)}")
        if self._bypassed:
            return None
        if self._trial is not None:
            d = self._trial()
            return output + (x.to(d.dtype) @ d.T).to(output.dtype)
        d = self.delta()
        if d is None:
            return None
        d = d.to(x.device)
        side = x.to(torch.float32) @ d.T
        score = side.norm(dim=-1) / output.to(torch.float32).norm(dim=-1).clamp(min=1e-12)
        routed = score > self.threshold()
        if not bool(routed.any()):
            return None  # the main memory answers everywhere: the module's own output
        return torch.where(routed[..., None], output + side.to(output.dtype), output)


class _Training:
    def __init__(self, memory: SideMemory, module: nn.Module, delta: Callable[[], torch.Tensor]):
        self.memory, self.module, self.delta = memory, module, delta

    def __enter__(self) -> None:
        self.memory._trial = self.delta
        self.memory._hook(self.module)

    def __exit__(self, *exc: Any) -> None:
        self.memory._trial = None
        if not self.memory._owners and self.memory._handle is not None:
            self.memory._handle.remove()
            self.memory._handle = None


# One side memory per hooked module. Weak keys: a model that is dropped takes its memories along.
_MEMORIES: "weakref.WeakKeyDictionary[nn.Module, SideMemory]" = weakref.WeakKeyDictionary()


def side_memory(module: nn.Module, create: bool = False) -> SideMemory | None:
    """The side memory at ``module`` (made when ``create``)."""
    memory = _MEMORIES.get(module)
    if memory is None and create:
        memory = _MEMORIES[module] = SideMemory()
    return memory


def module_shape(model: "LoadedModel", layer: int) -> tuple[int, int]:
    """``(d_out, d_in)`` of ``layer``'s MLP output projection as a linear map (GPT-2's
    Conv1D stores its weight transposed)."""
    w = model.parameter(model.mlp_out_weight_name(layer))
    d0, d1 = int(w.shape[0]), int(w.shape[1])
    return (d1, d0) if model.arch.transposed else (d0, d1)


class WiseMemory(Attachment):
    """One WISE edit's share of the side memory at ``layer``: its trained values on its
    shard's mask (regenerated from ``mask_seed``), the lowest activation score it reached
    on its own inputs, and the merge and routing settings it was made with."""

    kind = KIND
    method = METHOD

    def __init__(self, layer: int, shard: int, mask_seed: int, shape: tuple[int, int], mask_ratio: float,
                 values: torch.Tensor, score: float, act_ratio: float, density: float):  # fmt: skip
        self.layer, self.shard, self.mask_seed = int(layer), int(shard), int(mask_seed)
        self.shape = (int(shape[0]), int(shape[1]))
        self.mask_ratio, self.score, self.act_ratio, self.density = float(mask_ratio), float(score), float(act_ratio), float(density)
        self.values = values.detach().to("cpu", torch.float32).contiguous()
        if self.values.dim() != 1 or self.values.numel() != int(self.mask().sum()):
            raise ModelError(
                f"malformed WISE memory: {self.values.numel()} values for a mask of {int(self.mask().sum())} entries",
                "the attachment's files were not written by kedsl's WISE; re-apply the edit",
            )

    def mask(self) -> torch.Tensor:
        return shard_mask(self.shape, self.mask_ratio, self.mask_seed)

    def dense(self) -> torch.Tensor:
        """The edit's delta as a dense ``(d_out, d_in)`` float32 tensor."""
        out = torch.zeros(self.shape, dtype=torch.float32)
        out[self.mask()] = self.values
        return out

    def attach(self, model: "LoadedModel") -> None:
        model.check_layer(self.layer)
        if module_shape(model, self.layer) != self.shape:
            raise ModelError(
                f"this WISE memory was made for a {self.shape[1]} -> {self.shape[0]} projection; layer {self.layer} "
                f"of this model has {module_shape(model, self.layer)[1]} -> {module_shape(model, self.layer)[0]}",
                "install it only on the model (architecture) it was made with",
            )
        module = model.mlp_out(self.layer)
        side_memory(module, create=True).add(self, module)  # type: ignore[union-attr]

    def detach(self, model: "LoadedModel") -> None:
        memory = side_memory(model.mlp_out(self.layer))
        if memory is None:
            raise RuntimeError("this WISE memory is not attached to this model")
        memory.remove(self)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        config = {"format": FORMAT, "layer": self.layer, "shard": self.shard, "mask_seed": self.mask_seed, "shape": list(self.shape),
                  "mask_ratio": self.mask_ratio, "score": self.score, "act_ratio": self.act_ratio, "density": self.density}  # fmt: skip
        return {"values": self.values}, config

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> "WiseMemory":
        if config.get("format") != FORMAT or "values" not in tensors:
            raise ModelError(
                f"unsupported WISE memory (format {config.get('format')!r}, tensors {sorted(tensors)})",
                "it was written by another kedsl version; re-apply the edit with this one",
            )
        return cls(config["layer"], config["shard"], config["mask_seed"], tuple(config["shape"]), config["mask_ratio"],
                   tensors["values"], config["score"], config["act_ratio"], config["density"])  # fmt: skip

    def merged_deltas(self, model: "LoadedModel") -> dict[str, torch.Tensor] | None:
        return None  # routed per position: not a linear map that folds into the weights
