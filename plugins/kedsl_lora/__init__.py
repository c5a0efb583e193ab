"""kedsl_lora: LoRA and AdaLoRA edits through peft.

``lora`` (Hu et al. 2021) trains a low-rank adapter beside chosen modules (by default the
MLP output projections) on FT-M's objective, the teacher-forced cross-entropy of the target
tokens; ``adalora`` (Zhang et al. 2023) trains SVD-shaped adapters whose rank budget peft's
rank allocator moves between the modules while training. Both leave the weights untouched:
the trained adapter is the edit's outcome, an attachment (kinds ``lora_adapter`` and
``adalora_adapter``) that is installed with peft, removed exactly, saved as a standard peft
adapter folder beside the weights (``save to "dir" adapter;``, the default) or folded into
them (``save to "dir" merged;``). Sequential edits stack adapters; all stay active.

The implementation is :mod:`kedsl_lora.lora` (training) and :mod:`kedsl_lora.adapters`
(the attachments); this module holds only descriptors and stays importable without torch.
"""
from __future__ import annotations

from kedsl.hookspecs import hookimpl
from kedsl.params import Param, Preset
from kedsl.specs import MethodSpec

_TARGETS = (
    Param("layers", "layers", None, "layers whose modules get an adapter (an int, a list or a range like 10..20; default: every layer)", min=0),
    Param(
        "modules",
        "list[str]",
        ["mlp_out"],
        "which modules of each chosen layer get an adapter, by architecture role: "
        "mlp_out (the MLP output projection), mlp (every linear map of the MLP), attn (every linear map of attention)",
    ),
)


def _training(lr: float, steps: int, nll_tol: float) -> tuple[Param, ...]:
    return (
        Param("alpha", "float", 32.0, "LoRA scaling numerator: the update is (alpha / rank) * B A", min=1e-6),
        Param("dropout", "float", 0.0, "dropout on the adapter's input while training (0 keeps edits deterministic)", min=0.0, max=0.9),
        Param("lr", "float", lr, "Adam learning rate of the adapter", min=1e-7, max=1.0),
        Param("steps", "int", steps, "maximum optimisation steps (AdaLoRA's rank schedule spans all of them)", min=1, max=2000),
        Param("nll_tol", "float", nll_tol, "stop once the target tokens' mean NLL is below this", min=0.0),
    )


LORA_PARAMS = (
    *_TARGETS,
    Param("rank", "int", 8, "rank r of each adapter (B is d_out x r, A is r x d_in)", min=1, max=1024),
    *_training(lr=1e-3, steps=60, nll_tol=0.3),
)

ADALORA_PARAMS = (
    *_TARGETS,
    Param("init_rank", "int", 12, "rank each adapted module starts with", min=1, max=1024),
    Param("target_rank", "int", 8, "average rank per module the allocator prunes down to", min=1, max=1024),
    # AdaLoRA's E starts at zero and its A, B small: it needs a 10x larger rate than LoRA (measured)
    *_training(lr=1e-2, steps=60, nll_tol=0.3),
    Param("tinit", "int", 0, "warm-up steps before the rank budget starts to shrink", min=0),
    Param("tfinal", "int", 0, "final steps trained at the final (target) budget", min=0),
    Param("delta_t", "int", 1, "steps between two budget allocations", min=1),
    Param("beta1", "float", 0.85, "EMA factor of the sensitivity (importance) estimate", min=1e-6, max=0.999999),
    Param("beta2", "float", 0.85, "EMA factor of the uncertainty estimate", min=1e-6, max=0.999999),
    Param("orth_reg_weight", "float", 0.5, "weight of the orthogonality penalty on P and Q", min=0.0),
)

# Chosen on SmolLM2-135M-Instruct, ZsRE records 0-9 (single edits, float32, `kedsl bench ...
# --metrics efficacy,generalization,locality`), then checked on records 10-29; the whole
# sweep is kedsl_lora.lora.SWEEP. Fluency was measured only in 5-record smoke runs.
LORA_PRESETS = (
    Preset(
        family="llama",
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
        family="llama",
        values={"layers": [20], "modules": ["mlp_out"], "init_rank": 12, "target_rank": 8, "alpha": 32.0, "lr": 1e-2, "steps": 60, "nll_tol": 0.3},
        measured_by=(
            "SmolLM2-135M-Instruct, ZsRE single edits, 5 settings on records 0-9 (kedsl_lora.lora.SWEEP): layer 20's "
            "down_proj, lr 1e-2, stop at NLL 0.3 gave efficacy 1.00, generalization 0.890, locality 0.967 "
            "(lr 1e-3 does not move AdaLoRA's zero-initialised E: efficacy 0.18; layers 18-22: 1.00 / 1.00 / 0.883); "
            "checked on records 10-29: 1.00 / 0.848 / 0.843, 11 s/edit on a shared 2-core CPU"
        ),
    ),
)

LORA_SPEC = MethodSpec(
    name="lora",
    implementation="kedsl_lora.lora:LoRA",
    params=LORA_PARAMS,
    doc="LoRA through peft: a trained low-rank adapter (an attachment; weights untouched unless saved merged).",
    supports_batch=True,
    supports_sequential=True,
    presets=LORA_PRESETS,
    attachments=(("lora_adapter", "kedsl_lora.adapters:LoraAdapter"),),
)
ADALORA_SPEC = MethodSpec(
    name="adalora",
    implementation="kedsl_lora.lora:AdaLoRA",
    params=ADALORA_PARAMS,
    doc="AdaLoRA through peft: an adapter whose rank budget is allocated across modules while training (an attachment).",
    supports_batch=True,
    supports_sequential=True,
    presets=ADALORA_PRESETS,
    attachments=(("adalora_adapter", "kedsl_lora.adapters:AdaLoraAdapter"),),
)


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [LORA_SPEC, ADALORA_SPEC]
