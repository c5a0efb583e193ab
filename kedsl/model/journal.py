"""The weight journal: every weight change goes through it, so it can be undone bit-exactly
and recorded exactly (the values before and after)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .offload import read_weight, write_weight


@dataclass
class WeightChange:
    """A parameter's exact value before and after an edit (CPU copies)."""

    name: str
    before: torch.Tensor
    after: torch.Tensor

    @property
    def delta(self) -> torch.Tensor:
        return self.after.float() - self.before.float()


class WeightJournal:
    """Applies weight changes to a model and remembers the originals for exact undo."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._before: dict[str, torch.Tensor] = {}

    def _param(self, name: str) -> torch.nn.Parameter:
        return self.model.get_parameter(name)

    def _remember(self, name: str) -> torch.nn.Parameter:
        p = self._param(name)
        if name not in self._before:
            self._before[name] = read_weight(self.model, name).to("cpu", copy=True)
        return p

    @torch.no_grad()
    def add_(self, name: str, delta: torch.Tensor) -> None:
        """``W += delta`` (delta in W's shape; cast to W's dtype and device)."""
        p = self._remember(name)
        if p.is_meta:  # offloaded by a device map: the values live in accelerate's map
            w = read_weight(self.model, name)
            write_weight(self.model, name, w + delta.to(device=w.device, dtype=w.dtype))
        else:
            p.add_(delta.to(device=p.device, dtype=p.dtype))

    @torch.no_grad()
    def set_(self, name: str, value: torch.Tensor) -> None:
        self._remember(name)
        write_weight(self.model, name, value)

    def touched(self) -> list[str]:
        return list(self._before)

    @torch.no_grad()
    def rollback(self) -> None:
        """Restore every touched parameter bit-exactly."""
        for name, before in self._before.items():
            write_weight(self.model, name, before)
        self._before.clear()

    def changes(self) -> dict[str, WeightChange]:
        return {
            name: WeightChange(name, before, read_weight(self.model, name).to("cpu", copy=True))
            for name, before in self._before.items()
        }
