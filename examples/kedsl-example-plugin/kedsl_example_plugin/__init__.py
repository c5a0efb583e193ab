"""kedsl-example-plugin: a minimal third-party kedsl plugin.

It contributes one metric, ``target_probability``. This module only describes the metric
(a torch-free :class:`kedsl.specs.MetricSpec`); the implementation lives in
:mod:`kedsl_example_plugin.target_probability` and is imported only when a run measures
the metric, so ``kedsl check`` and ``kedsl plugins`` stay fast.
"""
from __future__ import annotations

from kedsl.hookspecs import hookimpl
from kedsl.specs import MetricSpec

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


@hookimpl
def register_metrics() -> list[MetricSpec]:
    return [TARGET_PROBABILITY]
