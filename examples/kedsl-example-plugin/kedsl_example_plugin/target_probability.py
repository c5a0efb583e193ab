"""The ``target_probability`` metric (imports torch through kedsl.toolkit.scoring)."""
from __future__ import annotations

import math
from typing import Any

from kedsl.plugin import EvalCase, LoadedModel, Metric, MetricResult
from kedsl.toolkit.scoring import teacher_forced


class TargetProbability(Metric):
    """Whole-sequence probability of the new target after each edit prompt.

    For an edit prompt ``p`` and target tokens ``t_1..t_n`` (tokenized jointly with ``p``
    by :func:`kedsl.toolkit.tokens.encode_pair`, kedsl's rule), the probability is
    ``exp(sum_i log P(t_i | p, t_<i))``; a case's value is the mean over its edit prompts
    (``case.rewrite``). A pair without an answer scores the case's target.
    """

    batch_size = 32

    def measure(self, model: LoadedModel, cases: list[EvalCase], baselines: list[Any] | None) -> list[MetricResult]:
        # All prompts of all cases in one list, so kedsl.scoring batches the forward passes.
        owners: list[int] = []
        pairs: list[tuple[str, str]] = []
        for ci, case in enumerate(cases):
            for prompt, answer in case.rewrite:
                owners.append(ci)
                pairs.append((prompt, answer or case.target))
        scores = teacher_forced(model, pairs, batch_size=self.batch_size)

        per_case: list[list[dict[str, Any]]] = [[] for _ in cases]
        for ci, (prompt, target), score in zip(owners, pairs, scores):
            per_case[ci].append(
                {"prompt": prompt, "target": target, "log_prob": score.logprob, "probability": math.exp(score.logprob)}
            )
        results = []
        for scored in per_case:
            if not scored:
                results.append(MetricResult(value=None, n=0))
                continue
            probs = [s["probability"] for s in scored]
            results.append(MetricResult(value=sum(probs) / len(probs), n=len(probs), details={"prompts": scored}))
        return results
