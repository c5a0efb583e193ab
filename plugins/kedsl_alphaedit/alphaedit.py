"""AlphaEdit (Fang et al. 2025), built on :mod:`kedsl.toolkit.multilayer`.

Targets and the spread over layers are MEMIT's. AlphaEdit's per-layer rule, with ``K``
the batch's keys, ``R`` the layer's residuals and ``K_p`` the keys of the edits made
before in the same sequence:

* ``P``: projection onto the null space of the preserved keys. ``C = E[k kᵀ]`` over the
  statistics corpus stands for "keys the model should keep answering as before"; its
  eigenvectors with eigenvalue below ``null_space_threshold`` × the largest span the
  directions those keys barely use, and ``P = Û Ûᵀ``. Computed once per (layer,
  statistics, threshold) from the cached statistics and kept for the process
  (:func:`null_space_projection`).
* ``ΔWᵀ = (P (K_p K_pᵀ + K Kᵀ) + α I)⁻¹ P K Rᵀ``, α = ``l2``. The solution lies in the
  range of ``P`` (``αx = P(b − Mx)``), so ``ΔW k ≈ 0`` for preserved keys ``k``: the
  edit leaves their outputs alone, by construction rather than by a weighted penalty.
* the accumulated term ``K_p K_pᵀ`` (``d_in²`` per layer) lives in the method state
  (``cache.<layer>``), which the executor snapshots for rollback and saves with the
  model, so a later ``apply`` on the saved model keeps protecting these edits.

``P`` is the paper's; the threshold is relative here (the paper's absolute 2e-2 is tied
to its models' key scale).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kedsl.editing import EditContext, EditOutcome, EditRequest
from kedsl.model.handle import LoadedModel
from kedsl.toolkit.multilayer import MultiLayerConfig, multilayer_edit
from kedsl.toolkit.stats import base_fingerprint, second_moment

log = logging.getLogger(__name__)

MEASURED = """The sweeps that measured MEMIT's lambda also measured AlphaEdit's l2 on the same
targets: tables in kedsl_memit.memit.SWEEP (bench/multilayer_sweep.py). Chosen: l2 = 1 (l2 =
10 keeps locality near 0.9 but closes only ~2/3 of the target gap), MEMIT's layers (2..8)
and search settings; the threshold (relative 1e-2) is not swept."""


@dataclass
class AlphaEditConfig(MultiLayerConfig):
    """AlphaEdit's parameters (see kedsl_alphaedit.PARAMS for the documentation of each)."""

    method: ClassVar[str] = "alphaedit"
    null_space_threshold: float = 1e-2
    l2: float = 10.0


def null_space_projection(mom2: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """``P = Û Ûᵀ`` (float64) with ``Û`` the eigenvectors of ``mom2`` whose eigenvalue is
    below ``threshold`` × the largest; returns ``P`` and the null space's dimension."""
    c = mom2.double()
    c = (c + c.T) / 2
    evals, evecs = torch.linalg.eigh(c)
    small = evals < threshold * evals.max()
    u = evecs[:, small]
    return u @ u.T, int(small.sum())


def projection_for(model: LoadedModel, layer: int, cfg: AlphaEditConfig) -> tuple[torch.Tensor, int]:
    """The layer's projection, computed once per model, statistics and threshold."""
    cache = model.meta.setdefault("alphaedit_projections", {})
    key = (base_fingerprint(model), layer, cfg.stats_corpus, cfg.mom2_samples, cfg.seed, cfg.null_space_threshold)
    if key not in cache:
        t = time.perf_counter()
        mom2 = second_moment(model, layer, cfg.stats_corpus, cfg.mom2_samples, cfg.seed)
        cache[key] = null_space_projection(mom2, cfg.null_space_threshold)
        log.info("alphaedit: layer %d null space has %d of %d dimensions (%.1fs)", layer, cache[key][1], mom2.shape[0], time.perf_counter() - t)
    return cache[key]


def projected_update(keys: torch.Tensor, residuals: torch.Tensor, projection: torch.Tensor, earlier: torch.Tensor | None, l2: float) -> torch.Tensor:
    """``ΔW`` (float64, ``d_out × d_in``) from ``(P (K_p K_pᵀ + K Kᵀ) + αI) ΔWᵀ = P K Rᵀ``;
    ``earlier`` is ``K_p K_pᵀ`` (None before the first edit)."""
    k = keys.double()
    r = residuals.double()
    p = projection.double()
    m = k @ k.T
    if earlier is not None:
        m = m + earlier.double()
    a = p @ m + l2 * torch.eye(p.shape[0], dtype=torch.float64, device=p.device)
    return torch.linalg.solve(a, p @ k @ r.T).T


class AlphaEdit:
    """The method class named by kedsl_alphaedit's MethodSpec."""

    def touches(self, model: LoadedModel, params: dict[str, Any]) -> list[str]:
        """The MLP output projections of the edited layers (for ``kedsl plan``)."""
        return AlphaEditConfig.from_params(params).touched(model)

    def apply(self, model: LoadedModel, requests: list[EditRequest], params: dict[str, Any], context: EditContext) -> EditOutcome:
        cfg = AlphaEditConfig.from_params(params, context.seed)
        new_cache: dict[str, torch.Tensor] = {}
        null_dims: dict[int, int] = {}

        def solve(layer: int, keys: torch.Tensor, residuals: torch.Tensor) -> torch.Tensor:
            projection, null_dims[layer] = projection_for(model, layer, cfg)
            earlier = context.state.get(f"cache.{layer}")
            kk = (keys.double() @ keys.double().T).float()
            new_cache[f"cache.{layer}"] = kk if earlier is None else earlier + kk
            return projected_update(keys, residuals, projection, earlier, cfg.l2)

        info = multilayer_edit(model, requests, cfg, context, solve)
        # replace (never mutate) state entries: the executor's rollback restores a shallow copy
        context.state.update(new_cache)
        return context.outcome(null_space_dims=null_dims, **info)
