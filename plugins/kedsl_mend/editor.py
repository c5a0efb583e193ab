"""MEND's editor: the gradient factors of an edit, and the network that turns them into a
weight change (Mitchell et al. 2022, section 3).

For a linear layer ``y = W x`` and a loss ``L``, ``dL/dW = sum_t d_t x_t^T`` over the tokens
``t``, with ``x_t`` the layer's input and ``d_t = dL/dy_t``. MEND concatenates each token's
``z_t = [x_t; d_t]``, normalises it with running statistics, and passes it through a
network with a residual connection (``z + W2 relu(W1 z + b1) * (1 + s_l) + t_l``, the last
two a per-layer scale and shift: one network serves every edited layer of one weight
shape). The outputs split back into ``x~_t`` and ``d~_t``, and the edit is
``W <- W - lr_l * sum_t d~_t x~_t^T`` with a learned step size ``lr_l`` per layer. ``W2``
starts at zero, so an untrained editor makes a normalised gradient step.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from kedsl.plugin import LoadedModel
from kedsl.toolkit.gradients import AnswerBatch as Encoded, fold_moments, linear_factors, standardise


def gradient_factors(model: LoadedModel, batch: Encoded, layers: Sequence[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the inputs ``X`` (tokens x d_in) and output gradients ``D`` (tokens x
    d_out) of its MLP output projection for the answer NLL of ``batch``, over the
    non-padding tokens (``dL/dW = D^T X``). The model's weights get no ``.grad``."""
    return linear_factors(model, batch, {layer: model.mlp_out(layer) for layer in layers})


def shape_key(model: LoadedModel, layer: int) -> str:
    """The weight shape a network serves, as ``"d_in x d_out"``."""
    w = model.parameter(model.mlp_out_weight_name(layer))
    d_out, d_in = (w.shape[1], w.shape[0]) if model.arch.transposed else (w.shape[0], w.shape[1])
    return f"{d_in}x{d_out}"


def init_tensors(model: LoadedModel, layers: Sequence[int], rank: int, init_lr: float, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A fresh editor: (trained tensors, running-statistics buffers)."""
    gen = torch.Generator().manual_seed(seed)
    params: dict[str, torch.Tensor] = {}
    buffers: dict[str, torch.Tensor] = {}
    for key in sorted({shape_key(model, layer) for layer in layers}):
        d_in, d_out = (int(x) for x in key.split("x"))
        dim = d_in + d_out
        params[f"net.{key}.w1"] = torch.randn(rank, dim, generator=gen) * dim**-0.5
        params[f"net.{key}.b1"] = torch.zeros(rank)
        params[f"net.{key}.w2"] = torch.zeros(dim, rank)
        params[f"net.{key}.b2"] = torch.zeros(dim)
        buffers[f"norm.{key}.mean"] = torch.zeros(dim)
        buffers[f"norm.{key}.m2"] = torch.zeros(dim)
        buffers[f"norm.{key}.count"] = torch.zeros(())
    for layer in layers:
        params[f"layer.{layer}.scale"] = torch.zeros(rank)
        params[f"layer.{layer}.shift"] = torch.zeros(rank)
        params[f"layer.{layer}.lr"] = torch.tensor(float(init_lr))
    return params, buffers


def update_statistics(buffers: dict[str, torch.Tensor], key: str, z: torch.Tensor) -> None:
    """Fold the rows of ``z`` into the running statistics of the network for ``key``."""
    fold_moments(buffers[f"norm.{key}.mean"], buffers[f"norm.{key}.m2"], buffers[f"norm.{key}.count"], z)


def weight_deltas(
    model: LoadedModel,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    factors: dict[int, tuple[torch.Tensor, torch.Tensor]],
    lr_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The edit: per edited weight (by parameter name), ``-lr * sum_t d~_t x~_t^T`` in the
    weight's own orientation (GPT-2's Conv1D stores it transposed); differentiable in
    ``params``."""
    out = {}
    for layer, (x, d) in factors.items():
        key = shape_key(model, layer)
        d_in = x.shape[1]
        z = torch.cat([x, d], dim=1)
        count = buffers[f"norm.{key}.count"]
        if float(count) > 1:
            mean, var = buffers[f"norm.{key}.mean"], buffers[f"norm.{key}.m2"] / count
        else:  # an untrained editor: the batch's own statistics
            mean, var = z.mean(0).detach(), z.var(0, unbiased=False).detach()
        zn = standardise(z, mean, var)
        hidden = F.relu(F.linear(zn, params[f"net.{key}.w1"], params[f"net.{key}.b1"]))
        hidden = hidden * (1 + params[f"layer.{layer}.scale"]) + params[f"layer.{layer}.shift"]
        transformed = zn + F.linear(hidden, params[f"net.{key}.w2"], params[f"net.{key}.b2"])
        x_t, d_t = transformed[:, :d_in], transformed[:, d_in:]
        delta = -(lr_scale * params[f"layer.{layer}.lr"]) * (d_t.T @ x_t)  # (d_out, d_in)
        out[model.mlp_out_weight_name(layer)] = delta.T if model.arch.transposed else delta
    return out


def edited_logits(model: LoadedModel, deltas: dict[str, torch.Tensor], batch: Encoded) -> torch.Tensor:
    """The model's logits with ``deltas`` added to its weights, without changing the model
    (``torch.func.functional_call``), differentiable in the deltas."""
    weights = {name: model.parameter(name) + delta.to(model.parameter(name).dtype) for name, delta in deltas.items()}
    return torch.func.functional_call(model.model, weights, args=(), kwargs={"input_ids": batch.ids, "attention_mask": batch.mask}).logits


def default_layers(model: LoadedModel, layers: Sequence[int] | None) -> list[int]:
    """The edited layers: as given (each checked), else the last three."""
    chosen = list(layers) if layers else list(range(max(0, model.num_layers - 3), model.num_layers))
    for layer in chosen:
        model.check_layer(layer)
    return sorted(set(chosen))


def describe_factors(factors: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    return {str(layer): int(x.shape[0]) for layer, (x, _) in factors.items()}
