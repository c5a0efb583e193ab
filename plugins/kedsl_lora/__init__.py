"""kedsl_lora: LoRA and AdaLoRA edits through peft.

``lora`` (Hu et al. 2021) trains a low-rank adapter beside chosen modules (by default the
MLP output projections) on FT-M's objective, the teacher-forced cross-entropy of the target
tokens; ``adalora`` (Zhang et al. 2023) trains SVD-shaped adapters whose rank budget peft's
rank allocator moves between the modules while training. Both leave the weights untouched:
the trained adapter is the edit's outcome, an attachment (kinds ``lora_adapter`` and
``adalora_adapter``) that is installed with peft, removed exactly, saved as a standard peft
adapter folder beside the weights (``save to "dir" adapter;``, the default) or folded into
them (``save to "dir" merged;``). Sequential edits stack adapters; all stay active.

An adapter is trained towards a target: a new answer (``edit``, ``insert``) or an
erasure's refusal (``erase``). The implementation is :mod:`kedsl_lora.lora` (training) and
:mod:`kedsl_lora.adapters` (the attachments); the parameters are declared in
:mod:`kedsl_lora.config`; this module holds only descriptors and stays importable without
torch.
"""
from __future__ import annotations

from kedsl.plugin import MethodSpec, hookimpl

from .config import DEPTH, ADALORA_PRESETS, LORA_PRESETS, AdaLoRAConfig, LoRAConfig

#: The declared parameters (derived from the configurations).
LORA_PARAMS = LoRAConfig.params()
ADALORA_PARAMS = AdaLoRAConfig.params()

LORA_SPEC = MethodSpec(
    name="lora",
    implementation="kedsl_lora.lora:LoRA",
    config=LoRAConfig,
    doc="LoRA through peft: a trained low-rank adapter (an attachment; weights untouched unless saved merged).",
    supports_batch=True,
    supports_sequential=True,
    presets=LORA_PRESETS,
    depth_defaults=DEPTH,
    attachments=(("lora_adapter", "kedsl_lora.adapters:LoraAdapter"),),
    kinds=("edit", "insert", "erase"),
)
ADALORA_SPEC = MethodSpec(
    name="adalora",
    implementation="kedsl_lora.lora:AdaLoRA",
    config=AdaLoRAConfig,
    doc="AdaLoRA through peft: an adapter whose rank budget is allocated across modules while training (an attachment).",
    supports_batch=True,
    supports_sequential=True,
    presets=ADALORA_PRESETS,
    depth_defaults=DEPTH,
    attachments=(("adalora_adapter", "kedsl_lora.adapters:AdaLoraAdapter"),),
    kinds=("edit", "insert", "erase"),
)


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [LORA_SPEC, ADALORA_SPEC]
