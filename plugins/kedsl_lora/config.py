"""LoRA's and AdaLoRA's parameters, declared once (torch-free: ``kedsl check`` validates
scripts against them), and their presets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kedsl.plugin import Depth, MethodConfig, Preset, param


@dataclass
class AdapterConfig(MethodConfig):
    """What LoRA and AdaLoRA share: where the adapters go and how they are trained."""

    layers: list[int] | None = param(None, "layers whose modules get an adapter (an int, a list or a range like 10..20; default: every layer)", type="layers", min=0)
    modules: list[str] = param(
        ["mlp_out"],
        "which modules of each chosen layer get an adapter, by architecture role: "
        "mlp_out (the MLP output projection), mlp (every linear map of the MLP), attn (every linear map of attention)",
    )
    alpha: float = param(32.0, "LoRA scaling numerator: the update is (alpha / rank) * B A", min=1e-6)
    dropout: float = param(0.0, "dropout on the adapter's input while training (0 keeps edits deterministic)", min=0.0, max=0.9)
    lr: float = param(1e-3, "Adam learning rate of the adapter", min=1e-7, max=1.0)
    steps: int = param(60, "maximum optimisation steps (AdaLoRA's rank schedule spans all of them)", min=1, max=2000)
    nll_tol: float = param(0.3, "stop once the target tokens' mean NLL is below this", min=0.0)


@dataclass
class LoRAConfig(AdapterConfig):
    """The ``lora`` configuration."""

    method: ClassVar[str] = "lora"

    rank: int = param(8, "rank r of each adapter (B is d_out x r, A is r x d_in)", min=1, max=1024)


@dataclass
class AdaLoRAConfig(AdapterConfig):
    """The ``adalora`` configuration: SVD-shaped adapters whose rank budget is allocated."""

    method: ClassVar[str] = "adalora"

    # AdaLoRA's E starts at zero and its A, B small: it needs a 10x larger rate than LoRA (measured)
    lr: float = param(1e-2, "Adam learning rate of the adapter", min=1e-7, max=1.0)
    init_rank: int = param(12, "rank each adapted module starts with", min=1, max=1024)
    target_rank: int = param(8, "average rank per module the allocator prunes down to", min=1, max=1024)
    tinit: int = param(0, "warm-up steps before the rank budget starts to shrink", min=0)
    tfinal: int = param(0, "final steps trained at the final (target) budget", min=0)
    delta_t: int = param(1, "steps between two budget allocations", min=1)
    beta1: float = param(0.85, "EMA factor of the sensitivity (importance) estimate", min=1e-6, max=0.999999)
    beta2: float = param(0.85, "EMA factor of the uncertainty estimate", min=1e-6, max=0.999999)
    orth_reg_weight: float = param(0.5, "weight of the orthogonality penalty on P and Q", min=0.0)


# Chosen on SmolLM2-135M-Instruct, ZsRE records 0-9 (single edits, float32, `kedsl bench ...
# --metrics efficacy,generalization,locality`), then checked on records 10-29; the whole
# sweep is kedsl_lora.lora.SWEEP. Fluency was measured only in 5-record smoke runs.
LORA_PRESETS = (
    Preset(
        model="smollm2-135m",
        values={"layers": [20], "modules": ["mlp_out"], "rank": 8, "alpha": 32.0, "lr": 1e-3, "steps": 60, "nll_tol": 0.3},
        measured_by=(
            "SmolLM2-135M-Instruct, ZsRE single edits, 8 settings on records 0-9 (kedsl_lora.lora.SWEEP): layer 20's "
            "down_proj, lr 1e-3, stop at NLL 0.3 gave efficacy 1.00, generalization 0.967, locality 0.917 "
            "(all 30 layers at lr 5e-3: locality 0.83 and fluency 311 -> 190 on records 0-4; lr 5e-3 at layer 20: "
            "locality 0.54); checked on records 10-29: 1.00 / 0.962 / 0.871, 13 s/edit on a shared 2-core CPU"
        ),
    ),
)
ADALORA_PRESETS = (
    Preset(
        model="smollm2-135m",
        values={"layers": [20], "modules": ["mlp_out"], "init_rank": 12, "target_rank": 8, "alpha": 32.0, "lr": 1e-2, "steps": 60, "nll_tol": 0.3},
        measured_by=(
            "SmolLM2-135M-Instruct, ZsRE single edits, 5 settings on records 0-9 (kedsl_lora.lora.SWEEP): layer 20's "
            "down_proj, lr 1e-2, stop at NLL 0.3 gave efficacy 1.00, generalization 0.890, locality 0.967 "
            "(lr 1e-3 does not move AdaLoRA's zero-initialised E: efficacy 0.18; layers 18-22: 1.00 / 1.00 / 0.883); "
            "checked on records 10-29: 1.00 / 0.848 / 0.843, 11 s/edit on a shared 2-core CPU"
        ),
    ),
)

#: For models without a measured preset: the same fraction of depth as the measured
#: preset (LoRA: layer 20 of 30 on SmolLM2).
DEPTH = (Depth("layers", 0.67, 0.67),)
