"""kedsl_ft: constrained fine-tuning baselines FT-L and FT-M.

FT-L (Zhu et al. 2020, the baseline of ROME): fine-tune one MLP output projection so the
last prompt token predicts the target's tokens, keeping every weight within an L∞ ball
(``norm_constraint``) around its original value. FT-M (EasyEdit, Zhang et al. 2024): the
same layer, teacher-forced cross-entropy on the target tokens only (prompt masked), no
constraint by default. Both change weights through the executor's journal, so undo,
revert and audit are exact. Both write a new target the same way whether the fact was
there before (``edit``) or not (``insert``), and an ``erase`` trains towards its refusal
("I don't know.", KnowEdit's Sanitation protocol), within ``erase_norm_constraint`` (FT-M:
5e-3; unbounded, a refusal spreads to unrelated questions); FT-M's ``unlearn`` adds a true
unlearning term that lowers the erased answer's probability. The implementation is
:mod:`kedsl_ft.ft`, the parameters are declared in :mod:`kedsl_ft.config`; this module
holds only descriptors and stays importable without torch.
"""
from __future__ import annotations

from kedsl.plugin import MethodSpec, hookimpl

from .config import DEPTH, FT_L_PRESETS, FT_M_PRESETS, FTLConfig, FTMConfig

#: The declared parameters (derived from the configurations).
FT_L_PARAMS = FTLConfig.params()
FT_M_PARAMS = FTMConfig.params()

FT_L_SPEC = MethodSpec(
    name="ft_l",
    implementation="kedsl_ft.ft:FTL",
    config=FTLConfig,
    doc="FT-L: fine-tune one MLP output projection (last prompt token -> target) within an L∞ ball.",
    supports_batch=True,
    supports_sequential=True,
    presets=FT_L_PRESETS,
    depth_defaults=DEPTH,
    kinds=("edit", "insert", "erase"),
)
FT_M_SPEC = MethodSpec(
    name="ft_m",
    implementation="kedsl_ft.ft:FTM",
    config=FTMConfig,
    doc="FT-M: fine-tune one MLP output projection, cross-entropy on the target tokens only (prompt masked).",
    supports_batch=True,
    supports_sequential=True,
    presets=FT_M_PRESETS,
    depth_defaults=DEPTH,
    kinds=("edit", "insert", "erase"),
)


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [FT_L_SPEC, FT_M_SPEC]
