"""kedsl_ft: constrained fine-tuning baselines FT-L and FT-M.

FT-L (Zhu et al. 2020, the baseline of ROME): fine-tune one MLP output projection so the
last prompt token predicts the target's tokens, keeping every weight within an L∞ ball
(``norm_constraint``) around its original value. FT-M (EasyEdit, Zhang et al. 2024): the
same layer, teacher-forced cross-entropy on the target tokens only (prompt masked), no
constraint by default. Both change weights through the executor's journal, so undo,
revert and audit are exact. The implementation is :mod:`kedsl_ft.ft`; this module holds
only descriptors and stays importable without torch.
"""
from __future__ import annotations

from kedsl.hookspecs import hookimpl
from kedsl.params import Param, Preset
from kedsl.specs import MethodSpec


def _params(norm_constraint: float) -> tuple[Param, ...]:
    return (
        Param("layer", "int", 20, "layer whose MLP output projection is fine-tuned", min=0),
        Param("lr", "float", 5e-4, "Adam learning rate", min=1e-7, max=1.0),
        Param("steps", "int", 25, "maximum optimisation steps", min=1, max=1000),
        Param("weight_decay", "float", 0.0, "Adam weight decay", min=0.0),
        Param(
            "norm_constraint",
            "float",
            norm_constraint,
            "L∞ bound on each weight's change (0: unconstrained)",
            min=0.0,
        ),
        Param("nll_tol", "float", 1e-2, "stop once the loss is below this", min=0.0),
    )


FT_L_PARAMS = _params(5e-4)
FT_M_PARAMS = _params(0.0)

FT_L_PRESETS = (
    Preset(
        family="llama",
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
        family="llama",
        values={"layer": 20},
        measured_by=(
            "SmolLM2-135M-Instruct, ZsRE records 0-19, single edits, layer 20, lr 5e-4, 25 steps: "
            "efficacy 0.962, generalization 0.875, locality 0.952 (kedsl bench ... --method ft_m --limit 20 "
            "--param layer=20); only one layer tried so far (EasyEdit's 2/3 of depth), no sweep yet"
        ),
    ),
)


FT_L_SPEC = MethodSpec(
    name="ft_l",
    implementation="kedsl_ft.ft:FTL",
    params=FT_L_PARAMS,
    doc="FT-L: fine-tune one MLP output projection (last prompt token -> target) within an L∞ ball.",
    supports_batch=True,
    supports_sequential=True,
    presets=FT_L_PRESETS,
)
FT_M_SPEC = MethodSpec(
    name="ft_m",
    implementation="kedsl_ft.ft:FTM",
    params=FT_M_PARAMS,
    doc="FT-M: fine-tune one MLP output projection, cross-entropy on the target tokens only (prompt masked).",
    supports_batch=True,
    supports_sequential=True,
    presets=FT_M_PRESETS,
)


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [FT_L_SPEC, FT_M_SPEC]
