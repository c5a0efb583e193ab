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
    model's (measured by :meth:`baseline` before the edit), mean over prompts; where the
    case names each prompt's key (KnowEdit's ``Relation_Specificity``, ``Forgetfulness``:
    ``meta["locality_keys"]``), the mean per key, then over keys, as KnowEdit averages.

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
        for c, b, s in zip(cases, baselines, scores):
            fr = [sum(int(x == y) for x, y in zip(now.predicted, before)) / len(before) for now, before in zip(s, b.argmax)]
            keys = c.meta.get("locality_keys")
            if not fr:
                out.append(MetricResult(None, n=0))
            elif keys and len(keys) == len(fr):
                per_key: dict[str, list[float]] = {}
                for k, v in zip(keys, fr):
                    per_key.setdefault(k, []).append(v)
                means = {k: sum(v) / len(v) for k, v in per_key.items()}
                out.append(MetricResult(_mean(list(means.values())), n=len(fr), details={"per_prompt": fr, "per_key": means}))
            else:
                out.append(MetricResult(_mean(fr), n=len(fr), details={"per_prompt": fr}))
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


# -- erasure ---------------------------------------------------------------------------------
#: An old answer counts as erased from a prompt when greedy decoding no longer starts with
#: it and its whole-sequence probability is below this.
ERASED_MAX_PROB = 0.1


def _normal(text: str) -> str:
    """Lower case, quotes and punctuation at the ends dropped: 'PYGMALION' ~ Pygmalion."""
    return re.sub(r"^\W+|\W+$", "", text.strip().lower())


class Erased(Metric):
    """Per edit prompt and paraphrase: 1 when the old answer is no longer the greedy
    continuation (n+5 tokens, compared without case and end punctuation) and its
    teacher-forced whole-sequence probability is below :data:`ERASED_MAX_PROB`; the mean.
    A case without an old answer has no value."""

    def measure(self, model: LoadedModel, cases: list[EvalCase], baselines: list[Any] | None = None) -> list[MetricResult]:
        tok = model.tokenizer
        groups = [[(p, c.old) for p, _ in c.rewrite + c.paraphrase] if c.old else [] for c in cases]
        flat, sizes = _flatten(groups)
        probs = [math.exp(x.logprob) for x in teacher_forced(model, flat, batch_size=BATCH_SIZE)] if flat else []
        budgets = [len(encode_pair(tok, p, a).target_ids) + EFFICACY_GEN_EXTRA_TOKENS for p, a in flat]
        conts = greedy(model, [p for p, _ in flat], max(budgets, default=0), BATCH_SIZE) if flat else []
        texts = [tok.decode(ids[:k], skip_special_tokens=True) for ids, k in zip(conts, budgets)]
        hits = [
            1.0 if not _normal(text).startswith(_normal(a)) and prob < ERASED_MAX_PROB else 0.0
            for (_, a), text, prob in zip(flat, texts, probs)
        ]
        out = []
        for h, ps, ts in zip(_split(hits, sizes), _split(probs, sizes), _split(texts, sizes)):
            out.append(MetricResult(_mean(h), n=len(h), details={"old_probability": ps, "generated": ts} if h else {}))
        return out


# -- WikiBio: long-form success by generation ------------------------------------------------
def token_f1(predicted: Sequence[int], target: Sequence[int]) -> float:
    """F1 of the multiset overlap between two token sequences."""
    common = sum((Counter(predicted) & Counter(target)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(target)
    return 2 * precision * recall / (precision + recall)


class LongformF1(Metric):
    """Per edit prompt: greedy decoding of as many tokens as the target has, and the token
    F1 (multiset overlap) of that continuation with the target; the mean. For long-form
    targets (WikiBio's new passage continuation), where "starts with the target" is
    all-or-nothing."""

    def measure(self, model: LoadedModel, cases: list[EvalCase], baselines: list[Any] | None = None) -> list[MetricResult]:
        tok = model.tokenizer
        flat, sizes = _flatten([_answered(c.rewrite, c.target) for c in cases])
        targets = [encode_pair(tok, p, t).target_ids for p, t in flat]
        conts = greedy(model, [p for p, _ in flat], max((len(t) for t in targets), default=0), BATCH_SIZE) if flat else []
        f1 = [token_f1(ids[: len(t)], t) for ids, t in zip(conts, targets)]
        return [MetricResult(_mean(v), n=len(v), details={"per_prompt": v} if v else {}) for v in _split(f1, sizes)]


# -- ConvSent: sentiment success, judged by the model's own likelihoods -------------------------
@dataclass
class SentimentBaseline:
    """The unedited model's mean token log-probability of the answers of the target sentiment."""

    target_logprob: float


def _sentiment_pairs(case: EvalCase) -> tuple[list[tuple[str, str]], list[bool]] | None:
    spec = case.meta.get("sentiment")
    if not spec:
        return None
    question, target, answers = spec["question"], spec["target"], spec["answers"]
    pairs, is_target = [], []
    for sentiment, texts in answers.items():
        for a in texts:
            pairs.append((question, a))
            is_target.append(sentiment == target)
    return pairs, is_target


def _pooled(scores: Sequence[Any], chosen: Sequence[bool]) -> float:
    """Mean log-probability per token over the chosen answers, their tokens pooled."""
    logps = [lp for s, c in zip(scores, chosen) if c for lp in s.logprobs]
    return sum(logps) / len(logps) if logps else float("nan")


class Sentiment(Metric):
    """ConvSent's success (EasyEdit's ``es``, Mitchell et al.'s SERAC): the model itself
    judges, by likelihood, whether it now answers the question about the entity with the
    target sentiment. With ``pos`` and ``neg`` the mean per-token log-probability (tokens
    pooled) of the answers of the target and the other sentiment after the question, and
    ``pre`` the target sentiment's before the edit: ``sigmoid(pos - neg) * min(1,
    exp(pos - pre))``. The first factor asks that the target sentiment be the more likely
    one, the second that its answers did not merely lose less likelihood than the others."""

    def _scores(self, model: LoadedModel, cases: list[EvalCase]) -> list[tuple[list[Any], list[bool]] | None]:
        prepared = [_sentiment_pairs(c) for c in cases]
        flat, sizes = _flatten([p[0] if p else [] for p in prepared])
        scores = _split(teacher_forced(model, flat, batch_size=BATCH_SIZE), sizes) if flat else [[] for _ in cases]
        return [(s, p[1]) if p else None for s, p in zip(scores, prepared)]

    def baseline(self, model: LoadedModel, cases: list[EvalCase]) -> list[SentimentBaseline | None]:
        return [SentimentBaseline(_pooled(*x)) if x else None for x in self._scores(model, cases)]

    def measure(self, model: LoadedModel, cases: list[EvalCase], baselines: list[Any] | None) -> list[MetricResult]:
        if baselines is None or len(baselines) != len(cases):
            raise ValueError("sentiment needs one baseline per case, measured on the unedited model")
        out = []
        for x, base in zip(self._scores(model, cases), baselines):
            if x is None or base is None:
                out.append(MetricResult(None, n=0))
                continue
            scores, is_target = x
            pos, neg = _pooled(scores, is_target), _pooled(scores, [not t for t in is_target])
            z_sent = 1.0 / (1.0 + math.exp(-(pos - neg)))
            z_topic = min(1.0, math.exp(pos - base.target_logprob))
            details = {"target_logprob": pos, "other_logprob": neg, "pre_target_logprob": base.target_logprob,
                       "z_sentiment": z_sent, "z_topic": z_topic}  # fmt: skip
            out.append(MetricResult(z_sent * z_topic, n=len(scores), details=details))
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
