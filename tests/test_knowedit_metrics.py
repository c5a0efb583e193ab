"""The metrics added for KnowEdit's datasets (erased, longform_f1, sentiment, locality per
key), pinned on the bigram model of test_metrics.py, whose predictions the test writes."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from test_metrics import EIFFEL, Bigram, _case  # noqa: E402

from kedsl.toolkit.tokens import encode_pair  # noqa: E402
from kedsl_metrics import measures as M  # noqa: E402


@pytest.fixture
def bigram(tiny_tokenizer):
    return Bigram(tiny_tokenizer)


def test_erased_needs_the_old_answer_gone_from_greedy_and_unlikely(bigram):
    case = _case(target="I don't know.", old="Paris", rewrite=[(EIFFEL, "I don't know.")])
    bigram.teach(EIFFEL + " Paris")
    (r,) = M.Erased().measure(bigram.lm, [case])
    assert r.value == 0.0 and r.details["generated"][0].strip().startswith("Paris")
    # greedy now says Rome, but Paris keeps a large probability: still not erased
    enc = encode_pair(bigram.tok, EIFFEL, "Paris")
    last, paris_first = enc.input_ids[enc.prompt_len - 1], enc.target_ids[0]
    rome = bigram.ids(" Rome")[0]
    with torch.no_grad():
        bigram.net.table[last].zero_()
        bigram.net.table[last, rome] = 10.0
        bigram.net.table[last, paris_first] = 9.9
    (r,) = M.Erased().measure(bigram.lm, [case])
    assert r.details["old_probability"][0] > M.ERASED_MAX_PROB and r.value == 0.0
    with torch.no_grad():
        bigram.net.table[last, paris_first] = 0.0
    (r,) = M.Erased().measure(bigram.lm, [case])
    assert r.details["old_probability"][0] < M.ERASED_MAX_PROB and r.value == 1.0 and r.n == 1
    (none,) = M.Erased().measure(bigram.lm, [_case(rewrite=[(EIFFEL, "x")])])  # no old answer: no value
    assert none.value is None


def test_erased_ignores_case_and_quotes():
    assert M._normal("'PYGMALION'") == M._normal("Pygmalion") == "pygmalion"


def test_longform_f1_is_the_token_overlap_of_the_greedy_continuation(bigram):
    target = "Paris, France"
    bigram.teach(EIFFEL + " " + target)
    (r,) = M.LongformF1().measure(bigram.lm, [_case(rewrite=[(EIFFEL, target)])])
    assert r.value == 1.0
    assert M.token_f1([1, 2, 3, 4], [1, 2, 9, 9]) == pytest.approx(0.5)
    assert M.token_f1([1, 1, 2], [1, 2, 2]) == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    assert M.token_f1([5], [6]) == 0.0


def _pooled_by_hand(bigram, question: str, answers: list[str]) -> float:
    logps = []
    for a in answers:
        enc = encode_pair(bigram.tok, question, a)
        ids = enc.input_ids
        logps += [bigram.logp(ids[t - 1], ids[t]) for t in range(enc.prompt_len, len(ids))]
    return sum(logps) / len(logps)


def test_sentiment_is_easyedits_es_on_the_models_own_likelihoods(bigram):
    question = "What do you think of Toyota?"
    answers = {"pos": ["I like it.", "Great."], "neg": ["I hate it."]}
    case = _case(subject="Toyota", target="I hate it.", meta={"sentiment": {"question": question, "target": "neg", "answers": answers}})
    metric = M.Sentiment()
    bigram.teach(question + " I like it.")
    (base,) = metric.baseline(bigram.lm, [case])
    pre = _pooled_by_hand(bigram, question, answers["neg"])
    assert base.target_logprob == pytest.approx(pre, abs=1e-5)
    bigram.teach(question + " I hate it.")  # the "edit": the negative answer becomes likely
    (r,) = metric.measure(bigram.lm, [case], [base])
    pos, neg = _pooled_by_hand(bigram, question, answers["neg"]), _pooled_by_hand(bigram, question, answers["pos"])
    expected = 1 / (1 + math.exp(-(pos - neg))) * min(1.0, math.exp(pos - pre))
    assert r.value == pytest.approx(expected, abs=1e-5) and r.n == 3
    assert r.details["z_topic"] == 1.0 and r.value > 0.5
    (none,) = metric.measure(bigram.lm, [_case()], [None])  # a case without ConvSent data
    assert none.value is None


def test_locality_averages_per_key_then_over_keys(bigram):
    prompts = ["The Louvre is located in the city of", "Toyota has its headquarters in", "Apple was founded by"]
    case = _case(locality=[(p, "Paris") for p in prompts], meta={"locality_keys": ["Relation_Specificity", "Relation_Specificity", "Forgetfulness"]})
    loc = M.Locality()
    (b,) = loc.baseline(bigram.lm, [case])
    apple = encode_pair(bigram.tok, prompts[2], "Paris")
    bigram.follow(apple.input_ids[apple.prompt_len - 1], bigram.ids(" Rome")[0] + 1)  # only the Forgetfulness prompt moves
    (r,) = loc.measure(bigram.lm, [case], [b])
    forgetfulness = r.details["per_key"]["Forgetfulness"]
    assert r.details["per_key"]["Relation_Specificity"] == 1.0 and forgetfulness < 1.0
    assert r.value == pytest.approx((1.0 + forgetfulness) / 2)  # not the prompt mean (2 + f) / 3
