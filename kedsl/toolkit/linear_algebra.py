"""Solves the update rules share."""
from __future__ import annotations

import torch


def solve_product(a: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``A⁻¹ (L R)`` for ``L`` (d × n) and ``R`` (n × p), as ``(A⁻¹ L) R`` when ``n < p``.

    The two orders are the same algebra, but the triangular solves cost ``d² × columns``:
    a handful of edits or answer tokens (``n``) against a projection's thousands of outputs
    (``p``) make the second order several times cheaper. Every operand is taken as given
    (the callers pass float64)."""
    if left.shape[1] < right.shape[1]:
        return torch.linalg.solve(a, left) @ right
    return torch.linalg.solve(a, left @ right)
