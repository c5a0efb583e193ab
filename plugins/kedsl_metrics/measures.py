"""Metric implementations (design/metrics.md). Each takes a list of cases and batches the
forward passes of all their prompts together through :mod:`kedsl.scoring`.

A metric over a case without relevant prompts returns ``MetricResult(None, n=0)``.
"""
from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from kedsl.plugin import EvalCase, LoadedModel, Metric, MetricResult, Pair
from kedsl.toolkit.scoring import encode_prompt, greedy, greedy_ids, score_encoded, teacher_forced
from kedsl.toolkit.tokens import Encoded, encode_pair

log = logging.getLogger(__name__)

BATCH_SIZE = 32
# Locality prompts given without an answer (`"q" unchanged`) are scored on the unedited
# model's own greedy continuation of this many tokens.
FREE_CONTINUATION_TOKENS = 5
FLUENCY_NEW_TOKENS = 100
EFFICACY_GEN_EXTRA_TOKENS = 5


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _flatten(groups: Sequence[Sequence[Any]]) -> tuple[list[Any], list[int]]:
    """All items of all groups, and the group sizes (to split results back)."""
    flat = [x for g in groups for x in g]
    return flat, [len(g) for g in groups]


def _split(flat: Sequence[Any], sizes: Sequence[int]) -> list[list[Any]]:
    out, at = [], 0
    for n in sizes:
        out.append(list(flat[at : at + n]))
        at += n
    return out


def _answered(pairs: Sequence[Pair], default: str) -> list[tuple[str, str]]:
    """Pairs with a missing answer replaced by ``default`` (the edit's target)."""
    return [(p, a if a is not None else default) for p, a in pairs]


# -- teacher-forced accuracy: efficacy, generalization, portability ------------------------
class _PairAccuracy(Metric):
    """Mean teacher-forced token accuracy over one field's (prompt, answer) pairs."""

    def pairs(self, case: EvalCase) -> list[Pair]:
        raise NotImplementedError

    def measure(self, model: LoadedModel, cases: list[EvalCase], baselines: list[Any] | None = None) -> list[MetricResult]:
        groups = [_answered(self.pairs(c), c.target) for c in cases]
        flat, sizes = _flatten(groups)
        scores = _split(teacher_forced(model, flat, batch_size=BATCH_SIZE), sizes)
        out = []
        for s in scores:
            accs = [x.accuracy for x in s]
            # The token ids too, so a saved result can be recomputed and inspected.
            details = {"per_prompt": accs, "target_ids": [x.target_ids for x in s], "predicted": [x.predicted for x in s]}
            out.append(MetricResult(_mean(accs), n=len(accs), details=details if accs else {}))
        return out


class Efficacy(_PairAccuracy):
    def pairs(self, case: EvalCase) -> list[Pair]:
        return case.rewrite


class Generalization(_PairAccuracy):
    def pairs(self, case: EvalCase) -> list[Pair]:
        return case.paraphrase


class Portability(Metric):
    """Accuracy per portability key; the value is the mean of the per-key means."""

    def measure(self, model: LoadedModel, cases: list[EvalCase], baselines: list[Any] | None = None) -> list[MetricResult]:
        keyed = [[(k, p, a) for k, pairs in c.portability.items() for p, a in pairs] for c in cases]
        flat, sizes = _flatten(keyed)
        for k, p, a in flat:
            if a is None:
                raise ValueError(f"portability prompt {p!r} (key {k}) has no answer")
        scores = _split(teacher_forced(model, [(p, a) for _, p, a in flat], batch_size=BATCH_SIZE), sizes)
        out = []
        for items, s in zip(keyed, scores):
            per_key: dict[str, list[float]] = {}
            for (k, _, _), x in zip(items, s):
                per_key.setdefault(k, []).append(x.accuracy)
            means = {k: sum(v) / len(v) for k, v in per_key.items()}
            out.append(
                MetricResult(
                    _mean(list(means.values())),
                    n=len(items),
                    details={"per_key": means, "n_per_key": {k: len(v) for k, v in per_key.items()}} if items else {},
                )
            )
        return out


# -- locality ------------------------------------------------------------------------------
@dataclass
class LocalityBaseline:
    """The unedited model's argmax at the answer positions of each locality prompt."""

    prompts: list[str]
    encoded: list[Encoded]  # exactly what is fed again after the edit
    argmax: list[list[int]]


class Locality(Metric):
    """Share of answer positions where the edited model's argmax equals the unedited
    model's (measured by :meth:`baseline` before the edit), mean over prompts.

    A prompt without an answer (``"q" unchanged``) is scored on the unedited model's own
    greedy continuation of ``FREE_CONTINUATION_TOKENS`` tokens (EOS if it stops at once),
    so `unchanged` means: the model still says what it said, token by token.
    """

    def baseline(self, model: LoadedModel, cases: list[EvalCase]) -> list[LocalityBaseline]:
        tok = model.tokenizer
        free = [(i, j, p) for i, c in enumerate(cases) for j, (p, a) in enumerate(c.locality) if a is None]
        conts = greedy_ids(model, [encode_prompt(tok, p) for _, _, p in free], FREE_CONTINUATION_TOKENS, BATCH_SIZE)
        free_enc: dict[tuple[int, int], Encoded] = {}
        for (i, j, p), cont in zip(free, conts):
            ids = encode_prompt(tok, p)
            if not cont:
                eos = tok.eos_token_id
                if eos is None:
                    raise ValueError(f"model produced no continuation of {p!r} and has no EOS token")
                cont = [int(eos)]
            free_enc[(i, j)] = Encoded(input_ids=ids + cont, prompt_len=len(ids), target_ids=cont)
        groups = [
            [free_enc[(i, j)] if a is None else encode_pair(tok, p, a) for j, (p, a) in enumerate(c.locality)]
            for i, c in enumerate(cases)
        ]
        flat, sizes = _flatten(groups)
        scores = _split(score_encoded(model, flat, batch_size=BATCH_SIZE), sizes)
        return [
            LocalityBaseline(prompts=[p for p, _ in c.locality], encoded=g, argmax=[x.predicted for x in s])
            for c, g, s in zip(cases, groups, scores)
        ]

    def measure(self, model: LoadedModel, cases: list[EvalCase], baselines: list[Any] | None) -> list[MetricResult]:
        if baselines is None or len(baselines) != len(cases):
            raise ValueError("locality needs one baseline per case, measured on the unedited model")
        for c, b in zip(cases, baselines):
            if b.prompts != [p for p, _ in c.locality]:
                raise ValueError("locality baseline was measured on different prompts than the case holds")
        flat, sizes = _flatten([b.encoded for b in baselines])
        scores = _split(score_encoded(model, flat, batch_size=BATCH_SIZE), sizes)
        out = []
        for b, s in zip(baselines, scores):
            fr = [sum(int(x == y) for x, y in zip(now.predicted, before)) / len(before) for now, before in zip(s, b.argmax)]
            out.append(MetricResult(_mean(fr), n=len(fr), details={"per_prompt": fr} if fr else {}))
        return out


# -- fluency -------------------------------------------------------------------------------
# Words and punctuation marks as separate tokens: an approximation of NLTK's Treebank
# word tokenizer, which the ROME evaluation uses (NLTK is not a dependency).
_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def ngram_entropy(tokens: Sequence[str], n: int) -> float:
    """Base-2 entropy of the frequency distribution of the ``n``-grams of ``tokens``."""
    grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(grams.values())
    return -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0


def text_fluency(text: str) -> float:
    """mean(2/3·H2, 4/3·H3) of one text (the ROME/MEMIT n-gram entropy), not scaled."""
    toks = words(text)
    return (2 / 3 * ngram_entropy(toks, 2) + 4 / 3 * ngram_entropy(toks, 3)) / 2


class Fluency(Metric):
    """Greedy generation of up to ``FLUENCY_NEW_TOKENS`` new tokens from each edit prompt
    and generation prompt; the mean over texts of :func:`text_fluency`, ×100 as the papers
    print it. As in the ROME evaluation, a text is the prompt followed by its
    continuation. The baseline is the same number on the unedited model.
    """

    def prompts(self, case: EvalCase) -> list[str]:
        return list(dict.fromkeys([p for p, _ in case.rewrite] + list(case.generation)))

    def _values(self, model: LoadedModel, cases: list[EvalCase]) -> list[tuple[float | None, list[float]]]:
        flat, sizes = _flatten([self.prompts(c) for c in cases])
        conts = greedy(model, flat, FLUENCY_NEW_TOKENS, BATCH_SIZE)
        texts = [p + model.tokenizer.decode(ids, skip_special_tokens=True) for p, ids in zip(flat, conts)]
        out = []
        for ts in _split(texts, sizes):
            vals = [100.0 * text_fluency(t) for t in ts]
            out.append((_mean(vals), vals))
        return out

    def baseline(self, model: LoadedModel, cases: list[EvalCase]) -> list[float | None]:
        return [v for v, _ in self._values(model, cases)]

    def measure(self, model: LoadedModel, cases: list[EvalCase], baselines: list[Any] | None) -> list[MetricResult]:
        if baselines is None or len(baselines) != len(cases):
            raise ValueError("fluency needs one baseline (the pre-edit fluency) per case")
        out = []
        for (v, vals), base in zip(self._values(model, cases), baselines):
            details = {"per_prompt": vals, "baseline": base}
            out.append(MetricResult(v, n=len(vals), details=details))
        return out


class FluencyUnrelated(Fluency):
    """:class:`Fluency` on the case's locality prompts instead of its edit prompts. The
    edit prompts' continuations change by design (a new answer, then whatever follows
    it), so their entropy moves even when nothing else in the model does; unrelated
    prompts show whether the model's generation in general has degraded (the collapse
    that long edit sequences cause)."""

    def prompts(self, case: EvalCase) -> list[str]:
        return list(dict.fromkeys(p for p, _ in case.locality))


# -- generation-based efficacy -------------------------------------------------------------
class EfficacyGen(Metric):
    """1 for an edit prompt if greedy decoding of n+5 tokens (n = target tokens), stripped
    of leading whitespace, starts with the target; mean over the edit prompts."""

    def measure(self, model: LoadedModel, cases: list[EvalCase], baselines: list[Any] | None = None) -> list[MetricResult]:
        tok = model.tokenizer
        flat, sizes = _flatten([_answered(c.rewrite, c.target) for c in cases])
        budgets = [len(encode_pair(tok, p, t).target_ids) + EFFICACY_GEN_EXTRA_TOKENS for p, t in flat]
        # Greedy decoding is prefix-consistent, so one run to the largest budget, cut per
        # prompt, equals a run per prompt.
        conts = greedy(model, [p for p, _ in flat], max(budgets, default=0), BATCH_SIZE)
        hits = []
        texts = []
        for (p, t), ids, k in zip(flat, conts, budgets):
            text = tok.decode(ids[:k], skip_special_tokens=True)
            texts.append(text)
            hits.append(1.0 if text.strip().startswith(t.strip()) else 0.0)
        out = []
        for h, ts in zip(_split(hits, sizes), _split(texts, sizes)):
            out.append(MetricResult(_mean(h), n=len(h), details={"generated": ts} if h else {}))
        return out


# -- CounterFact scores --------------------------------------------------------------------
class _Comparison(Metric):
    """Share of prompts where log P(a | p) > log P(b | p), whole-sequence probabilities."""

    def triples(self, case: EvalCase) -> list[tuple[str, str, str]]:
        """(prompt, preferred answer, other answer) per prompt."""
        raise NotImplementedError

    def measure(self, model: LoadedModel, cases: list[EvalCase], baselines: list[Any] | None = None) -> list[MetricResult]:
        flat, sizes = _flatten([self.triples(c) for c in cases])
        pairs = [(p, a) for p, a, _ in flat] + [(p, b) for p, _, b in flat]
        scores = teacher_forced(model, pairs, batch_size=BATCH_SIZE)
        m = len(flat)
        wins = [1.0 if scores[i].logprob > scores[m + i].logprob else 0.0 for i in range(m)]
        margins = [scores[i].logprob - scores[m + i].logprob for i in range(m)]
        out = []
        for w, g in zip(_split(wins, sizes), _split(margins, sizes)):
            out.append(MetricResult(_mean(w), n=len(w), details={"logprob_margin": g} if w else {}))
        return out


def _new_over_old(pairs_of: Callable[[EvalCase], list[Pair]]) -> Callable[[EvalCase], list[tuple[str, str, str]]]:
    def triples(case: EvalCase) -> list[tuple[str, str, str]]:
        if case.old is None:
            return []  # no old target: nothing to compare against
        return [(p, a if a is not None else case.target, case.old) for p, a in pairs_of(case)]

    return triples


class EfficacyScore(_Comparison):
    triples = staticmethod(_new_over_old(lambda c: c.rewrite))


class ParaphraseScore(_Comparison):
    triples = staticmethod(_new_over_old(lambda c: c.paraphrase))


class NeighborhoodScore(_Comparison):
    """P(true) > P(new) on neighborhood prompts; the true answer is the pair's answer,
    else the case's old target."""

    @staticmethod
    def triples(case: EvalCase) -> list[tuple[str, str, str]]:
        out = []
        for p, a in case.neighborhood:
            true = a if a is not None else case.old
            if true is not None:
                out.append((p, true, case.target))
        return out
