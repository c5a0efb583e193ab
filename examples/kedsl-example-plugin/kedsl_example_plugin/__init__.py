"""kedsl-example-plugin: a minimal third-party kedsl plugin.

It contributes one metric, ``target_probability``, and one method, ``gradient_step``. This module
only describes them (torch-free descriptors from :mod:`kedsl.plugin`: a ``MetricSpec``,
and a ``MethodSpec`` whose parameters are the fields of :class:`GradientStepConfig`); the
implementations live in :mod:`kedsl_example_plugin.target_probability` and
:mod:`kedsl_example_plugin.gradient_step` and are imported only when a run uses them, so
``kedsl check`` and ``kedsl plugins`` stay fast.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kedsl.plugin import MethodConfig, MethodSpec, MetricSpec, hookimpl, param

__version__ = "0.1.0"

TARGET_PROBABILITY = MetricSpec(
    name="target_probability",
    implementation="kedsl_example_plugin.target_probability:TargetProbability",
    doc=(
        "Mean over the edit prompts of the whole-sequence probability of the new target, "
        "teacher-forced: P(t_1..t_n | p) = exp(sum_i log P(t_i | p, t_<i))."
    ),
    default_threshold=None,  # reported only, unless an `expect` gives a comparison
    needs_baseline=False,
    prompt_form="answer",
    prompts_field="rewrite",  # an `expect`'s own "p" -> "a" prompts are edit prompts
    higher_is_better=True,
)


@dataclass
class GradientStepConfig(MethodConfig):
    """``gradient_step``'s parameters: declared once, here; ``kedsl check`` validates them."""

    method: ClassVar[str] = "gradient_step"

    layer: int = param(1, "layer whose MLP output projection takes the steps", min=0)
    steps: int = param(10, "gradient steps on the target's cross-entropy", min=1, max=1000)
    lr: float = param(0.05, "step size of each gradient step", min=0.0, max=10.0)


GRADIENT_STEP = MethodSpec(
    name="gradient_step",
    implementation="kedsl_example_plugin.gradient_step:GradientStep",
    config=GradientStepConfig,
    doc="A few plain gradient steps on one MLP output projection (a teaching example, not a good editor).",
    supports_batch=True,
    kinds=("edit", "insert", "erase"),  # an erasure's target is its refusal: trained like any other
)


@hookimpl
def register_metrics() -> list[MetricSpec]:
    return [TARGET_PROBABILITY]


@hookimpl
def register_methods() -> list[MethodSpec]:
    return [GRADIENT_STEP]
