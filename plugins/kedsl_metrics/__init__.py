"""kedsl_metrics: the KnowEdit metrics (Edit Succ., Portability, Locality, Fluency; WikiBio's
long-form success, ConvSent's sentiment success), erasure, the generation-based efficacy
and the CounterFact scores, as defined in design/metrics.md.

This module holds descriptors only and must stay importable without torch; the
implementations live in :mod:`kedsl_metrics.measures` and are imported when measured.
"""
from __future__ import annotations

from kedsl.plugin import MetricSpec, hookimpl

_IMPL = "kedsl_metrics.measures:"

METRICS = [
    MetricSpec(
        name="efficacy",
        implementation=_IMPL + "Efficacy",
        doc="Edit Succ.: teacher-forced token accuracy of the new target after the edit prompt(s).",
        default_threshold=1.0,
        prompt_form="answer",
        prompts_field="rewrite",
    ),
    MetricSpec(
        name="generalization",
        implementation=_IMPL + "Generalization",
        doc="Teacher-forced token accuracy of the new target after paraphrases of the edit prompt.",
        default_threshold=0.5,
        prompt_form="answer",
        prompts_field="paraphrase",
    ),
    MetricSpec(
        name="portability",
        implementation=_IMPL + "Portability",
        doc="Teacher-forced token accuracy on portability prompts with their own answers; mean over keys.",
        default_threshold=None,
        prompt_form="answer",
        prompts_field="portability",
    ),
    MetricSpec(
        name="locality",
        implementation=_IMPL + "Locality",
        doc="Share of answer positions where the edited model's argmax equals the unedited model's.",
        default_threshold=0.9,
        needs_baseline=True,
        prompt_form="any",
        prompts_field="locality",
    ),
    MetricSpec(
        name="fluency",
        implementation=_IMPL + "Fluency",
        doc="Weighted word bi/trigram entropy (2/3 H2 + 4/3 H3, mean, x100) of greedy generations; "
        "passes within 10% of the pre-edit value.",
        relative_tolerance=0.10,
        needs_baseline=True,
        prompt_form="none",
        prompts_field="generation",
    ),
    MetricSpec(
        name="fluency_unrelated",
        implementation=_IMPL + "FluencyUnrelated",
        doc="Fluency (as above) of greedy generations from the locality prompts: whether generation in general "
        "degrades, apart from the edited answers; passes within 10% of the pre-edit value.",
        relative_tolerance=0.10,
        needs_baseline=True,
        prompt_form="none",
        prompts_field="locality",
    ),
    MetricSpec(
        name="efficacy_gen",
        implementation=_IMPL + "EfficacyGen",
        doc="Generation-based success: greedy n+5 tokens from the edit prompt start with the target.",
        default_threshold=None,
        prompt_form="answer",
        prompts_field="rewrite",
    ),
    MetricSpec(
        name="erased",
        implementation=_IMPL + "Erased",
        doc="Erasure: share of edit prompts and paraphrases where the old answer is no longer the greedy "
        "continuation and its teacher-forced probability is below 0.1.",
        default_threshold=1.0,
        prompt_form="any",
        prompts_field="rewrite",
    ),
    MetricSpec(
        name="longform_f1",
        implementation=_IMPL + "LongformF1",
        doc="Long-form success by generation (WikiBio): token F1 of the greedy continuation (as many tokens as the "
        "target) with the target.",
        default_threshold=None,
        prompt_form="answer",
        prompts_field="rewrite",
    ),
    MetricSpec(
        name="sentiment",
        implementation=_IMPL + "Sentiment",
        doc="ConvSent success judged by the model's own likelihoods (EasyEdit's es): sigmoid(pos - neg) x "
        "min(1, exp(pos - pre)), pos/neg the mean token log-probabilities of the answers of the target/other "
        "sentiment, pre the target's before the edit.",
        default_threshold=None,
        needs_baseline=True,
        prompt_form="none",
        prompts_field="rewrite",
    ),
    MetricSpec(
        name="es",
        implementation=_IMPL + "EfficacyScore",
        doc="CounterFact efficacy score: share of edit prompts with P(new) > P(old), whole-sequence.",
        default_threshold=None,
        prompt_form="any",
        prompts_field="rewrite",
    ),
    MetricSpec(
        name="ps",
        implementation=_IMPL + "ParaphraseScore",
        doc="CounterFact paraphrase score: share of paraphrases with P(new) > P(old), whole-sequence.",
        default_threshold=None,
        prompt_form="any",
        prompts_field="paraphrase",
    ),
    MetricSpec(
        name="ns",
        implementation=_IMPL + "NeighborhoodScore",
        doc="CounterFact neighborhood score: share of neighborhood prompts with P(true) > P(new).",
        default_threshold=None,
        prompt_form="any",
        prompts_field="neighborhood",
    ),
]


@hookimpl
def register_metrics() -> list[MetricSpec]:
    return list(METRICS)
