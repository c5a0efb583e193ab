"""FT-L's and FT-M's parameters, declared once (torch-free: ``kedsl check`` validates
scripts against them), and their presets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kedsl.plugin import Depth, MethodConfig, Preset, param


@dataclass
class FTConfig(MethodConfig):
    """The parameters FT-L and FT-M share; they differ in the default L∞ bound."""

    method: ClassVar[str] = "fine-tuning"

    layer: int = param(20, "layer whose MLP output projection is fine-tuned", min=0)
    lr: float = param(5e-4, "Adam learning rate", min=1e-7, max=1.0)
    steps: int = param(25, "maximum optimisation steps", min=1, max=1000)
    weight_decay: float = param(0.0, "Adam weight decay", min=0.0)
    norm_constraint: float = param(0.0, "L∞ bound on each weight's change (0: unconstrained)", min=0.0)
    erase_norm_constraint: float = param(
        0.0,
        "L∞ bound when every request is an erase (towards a refusal); 0: norm_constraint applies",
        min=0.0,
    )
    nll_tol: float = param(1e-2, "stop once the loss is below this", min=0.0)
    unlearn: float = param(
        0.0,
        "erase only: weight of an unlearning term, -log(1 - P(old answer token)) averaged over the old answer, "
        "added to the refusal's loss (0: KnowEdit's Sanitation protocol alone)",
        min=0.0,
    )


@dataclass
class FTLConfig(FTConfig):
    method: ClassVar[str] = "ft_l"

    norm_constraint: float = param(5e-4, "L∞ bound on each weight's change (0: unconstrained)", min=0.0)


@dataclass
class FTMConfig(FTConfig):
    method: ClassVar[str] = "ft_m"

    # A refusal is one short answer that fits every question: unbounded, FT-M teaches the
    # layer to refuse questions at large. SmolLM2-135M-Instruct, Sanitation's tuning file
    # (trivia_qa_train.json, records 0-11, layer 20, kedsl bench ... --method ft_m
    # --split tune --limit 12 --param erase_norm_constraint=...): unbounded efficacy 1.000,
    # locality 0.715; 1e-3 0.533/0.981; 2e-3 0.583/0.963; 4e-3 0.883/0.934; 5e-3
    # 1.000/0.924 (greedy answer "I don't know." on all 12); 8e-3 1.000/0.786. The same
    # bound on ZsRE's edits (with nll_tol 0.3) cut efficacy from 0.962 to 0.675: hence a
    # bound for erasures only.
    erase_norm_constraint: float = param(
        5e-3,
        "L∞ bound when every request is an erase (towards a refusal); 0: norm_constraint applies",
        min=0.0,
    )


FT_L_PRESETS = (
    Preset(
        model="smollm2-135m",
        values={"layer": 20, "norm_constraint": 5e-3},
        measured_by=(
            "SmolLM2-135M-Instruct, ZsRE records 0-9, single edits, layer 20, lr 5e-4, 25 steps "
            "(kedsl bench ... --method ft_l --limit 10 --param norm_constraint=...): norm_constraint 5e-4 and "
            "5e-3 both efficacy 0.180, generalization 0.165/0.180, locality 1.000, per case identical to each "
            "other: FT-L's objective pushes the *last prompt position* towards every target token, which cannot "
            "fit ZsRE's multi-token targets (loss 13.8 -> 7.2 on record 1 in 25 steps). On a one-token target "
            "('The Eiffel Tower is located in the city of' -> Rome) 5e-4 stops at loss 3.8 (not the argmax), "
            "5e-3 reaches 0.01: hence 5e-3. Layer not swept (a layer-6 run was cut for time)."
        ),
    ),
)
FT_M_PRESETS = (
    Preset(
        model="smollm2-135m",
        values={"layer": 20},
        measured_by=(
            "SmolLM2-135M-Instruct, ZsRE records 0-19, single edits, layer 20, lr 5e-4, 25 steps: "
            "efficacy 0.962, generalization 0.875, locality 0.952 (kedsl bench ... --method ft_m --limit 20 "
            "--param layer=20); only one layer tried so far (EasyEdit's 2/3 of depth), no sweep yet"
        ),
    ),
    Preset(
        model="gemma3-270m",
        values={"layer": 15},
        measured_by=(
            "Gemma 3 270M, ZsRE tuning records 0-9, single edits (bench/preset_sweep.py --model gemma3-270m --method ft_m "
            "--param layer --limit 10; bench/results/presets/gemma3-270m/ft_m), efficacy/generalization/locality: "
            "layer 8 1.000/1.000/0.718, 12 1.000/1.000/0.657, 15 1.000/1.000/0.847, 17 1.000/1.000/0.592"
        ),
    ),
    Preset(
        model="qwen2.5-coder-0.5b",
        values={"layer": 20},
        measured_by=(
            "Qwen2.5-Coder-0.5B-Instruct, ZsRE tuning records 0-9, single edits (bench/preset_sweep.py --model "
            "qwen2.5-coder-0.5b --method ft_m --param layer --limit 10; bench/results/presets/qwen2.5-coder-0.5b/ft_m), "
            "efficacy/generalization/locality: layer 12 1.000/1.000/0.337, 16 1.000/1.000/0.620, 20 1.000/1.000/0.880"
        ),
    ),
)

#: For models without a measured preset: the same fraction of depth as the measured
#: preset (FT: layer 20 of 30 on SmolLM2 (EasyEdit's two thirds of depth)).
DEPTH = (Depth("layer", 0.67),)
