"""MEND's parameters, declared once (torch-free): the method's (which trained editor to
use) and the editor's training hyper-parameters (``kedsl train mend --param NAME=VALUE``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kedsl.plugin import MethodConfig, Preset, param


@dataclass
class MENDConfig(MethodConfig):
    """The ``mend`` method: an edit is one pass of a trained editor."""

    method: ClassVar[str] = "mend"

    editor: str = param("", "the folder of a MEND editor trained for this model (kedsl train mend ... --out DIR)")
    lr_scale: float = param(1.0, "multiplies the editor's learned step sizes (1: as trained)", min=0.0, max=100.0)


@dataclass
class MENDTrainConfig(MethodConfig):
    """The MEND editor's hyper-parameters (Mitchell et al. 2022, defaults scaled to small models)."""

    method: ClassVar[str] = "mend"

    layers: list[int] | None = param(None, "layers whose MLP output projections are edited (default: the last three)", type="layers", min=0)
    rank: int = param(512, "hidden width of the gradient transform (one network per weight shape, shared by its layers)", min=1, max=8192)
    init_lr: float = param(1e-4, "initial per-layer step size of the edit", min=0.0)
    # MEND trains its step sizes at their own rate (lr_lr in its configuration): an Adam step of
    # the network's rate can be as large as a step size itself (init_lr 1e-4, --lr 1e-4).
    lr_lr: float | None = param(None, "learning rate of the per-layer step sizes (default: the loop's --lr, as for the network)", min=0.0)
    edit_weight: float = param(0.1, "c_edit: weight of the edit loss (the edited model's NLL of the target on the edit prompt and its paraphrases)", min=0.0)
    # 10, not the paper's 1: on SmolLM2 (zsre_mend_train_1k.json, batch 4, lr 1e-4) c_loc 1 reached
    # validation efficacy 0.93 with locality 0.72 after 400 steps; 10 reached 0.95 and 0.86.
    locality_weight: float = param(10.0, "c_loc: weight of the KL divergence from the base model on locality prompts", min=0.0)
    seed: int | None = param(None, "seed of the network's initialisation (default: the run's)", min=0)


PRESETS = (
    Preset(
        model="smollm2-135m",
        values={"lr_scale": 0.5},
        measured_by=(
            "SmolLM2-135M-Instruct with examples/editors/mend-smollm2 (README's kedsl train mend command), ZsRE "
            "tuning records 0-29 of zsre_eval_head.json, single edits (kedsl bench ... --method mend --split tune "
            "--limit 30 --param lr_scale=...), efficacy/generalization/locality: lr_scale 1.0 0.974/0.969/0.901, "
            "0.7 0.958/0.952/0.902, 0.5 0.927/0.903/0.951. The editor's validation locality (0.87 at its best "
            "step, locality_weight 10) is below what an edit should keep; half its learned step sizes trades "
            "0.05 efficacy for 0.05 locality"
        ),
    ),
    Preset(
        model="gemma3-270m",
        values={"lr_scale": 1.0},
        measured_by=(
            "Gemma 3 270M with examples/editors/mend-gemma3-270m (its best checkpoint is step 50 of 283: training "
            "at editor lr 1e-5 raised validation efficacy and cost locality after that), ZsRE tuning records 0-29, "
            "single edits (bench/preset_sweep.py --model gemma3-270m --method mend --param lr_scale --values "
            "1.0,0.7,0.5 --limit 30 --set editor=examples/editors/mend-gemma3-270m), efficacy/generalization/"
            "locality: lr_scale 1.0 83.3/81.2/83.8, 0.7 74.3/72.9/85.2, 0.5 68.0/66.4/86.9. Smaller steps cost "
            "efficacy three times faster than they return locality"
        ),
    ),
    Preset(
        model="qwen2.5-coder-0.5b",
        values={"lr_scale": 0.7},
        measured_by=(
            "Qwen2.5-Coder-0.5B-Instruct with examples/editors/mend-qwen2.5-coder-0.5b (trained with its step sizes "
            "at their own rate: init_lr 1e-5, lr 1e-4, lr_lr 1e-6; best checkpoint step 183 of 323), ZsRE tuning "
            "records 0-29, single edits (bench/preset_sweep.py --model qwen2.5-coder-0.5b --method mend --param "
            "lr_scale --values 1.0,0.7,0.5 --limit 30 --set editor=examples/editors/mend-qwen2.5-coder-0.5b), "
            "efficacy/generalization/locality: 1.0 92.4/91.8/93.1, 0.7 93.2/91.6/96.5, 0.5 91.6/86.9/96.6. The "
            "editor before it (MEND's initialisation, init_lr 1e-4: no trained step had beaten it) reached both "
            "85 only at 0.1: 86.6/83.0/89.9 (bench/results/presets/qwen2.5-coder-0.5b/mend/editor-initialisation/)"
        ),
    ),
)
