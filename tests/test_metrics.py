"""The metric plugins (kedsl_metrics) on models whose predictions the tests control.

``BigramLM`` is a causal LM whose next-token logits depend only on the last token
through a table the test writes, so every expected value below is computed by hand.
Batching/padding correctness on real architectures is checked with tiny LLaMA/GPT-2.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

import kedsl_architectures  # noqa: E402
import kedsl_metrics  # noqa: E402
from kedsl.evaluation.cases import EvalCase  # noqa: E402
from kedsl.model import LoadedModel  # noqa: E402
from kedsl.toolkit.scoring import greedy  # noqa: E402
from kedsl.toolkit.tokens import encode_pair  # noqa: E402
from kedsl_metrics import measures as M  # noqa: E402


class BigramLM(torch.nn.Module):
    """logits[t] = table[input_ids[t]]; positions, masks and caches do not matter."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab, vocab))

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None, logits_to_keep=0):
        logits = self.table[input_ids]
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=None)


class Bigram:
    """A LoadedModel around BigramLM with helpers to teach it texts."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.net = BigramLM(len(tokenizer))
        self.lm = LoadedModel(model=self.net, tokenizer=tokenizer, arch=kedsl_architectures.LLAMA_FAMILY, ref="bigram")

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def follow(self, a: int, b: int, strength: float = 10.0) -> None:
        """Make ``b`` the argmax after ``a``."""
        with torch.no_grad():
            self.net.table[a].zero_()
            self.net.table[a, b] = strength

    def teach(self, text: str) -> None:
        ids = self.ids(text)
        for a, b in zip(ids, ids[1:]):
            self.follow(a, b)

    def logp(self, a: int, b: int) -> float:
        return float(torch.log_softmax(self.net.table[a].detach(), -1)[b])


@pytest.fixture
def bigram(tiny_tokenizer):
    return Bigram(tiny_tokenizer)


EIFFEL = "The Eiffel Tower is located in the city of"


def _case(**kw) -> EvalCase:
    base = dict(subject="Eiffel Tower", target="Paris")
    base.update(kw)
    return EvalCase(**base)


def test_plugin_registers_specs_without_torch_in_init():
    import subprocess
    import sys

    code = "import sys, kedsl_metrics; kedsl_metrics.register_metrics(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    specs = {s.name: s for s in kedsl_metrics.register_metrics()}
    assert specs["efficacy"].default_threshold == 1.0
    assert specs["generalization"].default_threshold == 0.5
    assert specs["locality"].default_threshold == 0.9 and specs["locality"].needs_baseline
    assert specs["fluency"].relative_tolerance == 0.10 and specs["fluency"].needs_baseline
    assert specs["portability"].default_threshold is None
    for s in specs.values():
        s.load()  # every implementation string resolves


def test_efficacy_counts_target_positions(bigram):
    target = "Steve Jobs"
    enc = encode_pair(bigram.tok, "Apple was founded by", target)
    n = len(enc.target_ids)
    assert n >= 2
    chain = enc.input_ids[enc.prompt_len - 1 :]
    assert len(set(chain)) == len(chain), "the bigram model needs distinct tokens here"
    for a, b in zip(chain, chain[1:]):
        bigram.follow(a, b)
    case = _case(target=target, rewrite=[("Apple was founded by", target)])
    (r,) = M.Efficacy().measure(bigram.lm, [case], None)
    assert r.value == 1.0 and r.n == 1
    bigram.follow(chain[-2], bigram.ids(" Paris")[0])  # the last target token is missed
    (r,) = M.Efficacy().measure(bigram.lm, [case], None)
    assert r.value == pytest.approx((n - 1) / n)
    bigram.follow(chain[0], bigram.ids(" Paris")[0])  # and the first
    (r,) = M.Efficacy().measure(bigram.lm, [case], None)
    assert r.value == pytest.approx((n - 2) / n)


def test_efficacy_uses_joint_tokenization_with_leading_space(bigram):
    # taught with " Paris" (space-prefixed token): the target "Paris" must be scored as
    # " Paris" after the prompt, not as the bare "Paris" tokens
    bigram.teach(EIFFEL + " Paris")
    (r,) = M.Efficacy().measure(bigram.lm, [_case(rewrite=[(EIFFEL, "Paris")])], None)
    assert r.value == 1.0


def test_no_prompts_gives_none(bigram):
    case = _case()
    for cls in (M.Efficacy, M.Generalization, M.Portability, M.EfficacyGen, M.EfficacyScore, M.NeighborhoodScore):
        (r,) = cls().measure(bigram.lm, [case], None)
        assert r.value is None and r.n == 0
    (b,) = M.Locality().baseline(bigram.lm, [case])
    (r,) = M.Locality().measure(bigram.lm, [case], [b])
    assert r.value is None and r.n == 0


def test_generalization_and_portability_per_key(bigram):
    bigram.teach(EIFFEL + " Paris")
    bigram.teach("The Louvre is in France")
    case = _case(
        paraphrase=[(EIFFEL, None), ("Toyota has its headquarters in", "Paris")],
        portability={"Reasoning": [("The Louvre is in", "France")], "Subject_Aliasing": [("Apple was founded by", "Rome")]},
    )
    (g,) = M.Generalization().measure(bigram.lm, [case], None)
    # answer None means the edit's target; the second paraphrase is wrong unless 'in'
    # predicts ' Paris' -- it predicts ' France' (taught last)
    assert g.details["per_prompt"][0] == 1.0
    assert g.details["per_prompt"][1] == 0.0
    assert g.value == 0.5 and g.n == 2
    (p,) = M.Portability().measure(bigram.lm, [case], None)
    assert p.details["per_key"]["Reasoning"] == 1.0
    assert p.details["per_key"]["Subject_Aliasing"] == 0.0
    assert p.value == 0.5 and p.n == 2


def test_locality_compares_with_unedited_argmax(bigram):
    q, a = "The Louvre is located in the city of", "Paris."
    enc = encode_pair(bigram.tok, q, a)
    assert len(enc.target_ids) == 2
    last_q, paris = enc.input_ids[enc.prompt_len - 1], enc.target_ids[0]
    bigram.follow(last_q, bigram.ids(" Rome")[0])  # the unedited model does NOT say Paris
    bigram.follow(paris, bigram.ids(" France")[0])
    case = _case(locality=[(q, a)])
    loc = M.Locality()
    (b,) = loc.baseline(bigram.lm, [case])
    # unchanged model: locality 1 even though it never predicts the answer tokens
    assert loc.measure(bigram.lm, [case], [b])[0].value == 1.0
    bigram.follow(paris, bigram.ids(" Berlin")[0])  # the edit changes one of two positions
    (r,) = loc.measure(bigram.lm, [case], [b])
    assert r.value == 0.5 and r.n == 1


def test_locality_unchanged_prompt_uses_free_continuation(bigram):
    bigram.teach("Danielle Darrieux speaks French. The mother tongue of Catherine")
    prompt = "Danielle Darrieux speaks"
    case = _case(locality=[(prompt, None)])
    loc = M.Locality()
    (b,) = loc.baseline(bigram.lm, [case])
    cont = b.encoded[0].target_ids
    assert len(cont) == M.FREE_CONTINUATION_TOKENS
    assert bigram.tok.decode(cont).startswith(" French.")
    assert loc.measure(bigram.lm, [case], [b])[0].value == 1.0
    # change what follows the 3rd continuation token: positions 4 and 5 predict from
    # tokens 3 and 4; only the prediction made at token 3 changes -> 4/5
    bigram.follow(cont[2], bigram.ids(" Paris")[0])
    assert loc.measure(bigram.lm, [case], [b])[0].value == pytest.approx(4 / 5)


def test_locality_requires_baseline(bigram):
    with pytest.raises(ValueError):
        M.Locality().measure(bigram.lm, [_case(locality=[("a", "b")])], None)


def test_text_fluency_by_hand():
    # words a b a b: bigrams ab, ba, ab -> H2 = H(2/3, 1/3); trigrams aba, bab -> H3 = 1
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert M.text_fluency("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    # punctuation is a word: the cat sat . -> 3 distinct bigrams, 2 distinct trigrams
    assert M.words("the cat sat.") == ["the", "cat", "sat", "."]
    assert M.text_fluency("the cat sat.") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2)
    assert M.text_fluency("") == 0.0 and M.text_fluency("one two") == pytest.approx(0.0)


def test_fluency_value_and_baseline(bigram):
    bigram.teach("Apple was founded by Steve Jobs")
    jobs = bigram.ids(" Jobs")[-1]
    bigram.follow(jobs, bigram.ids(" and")[0])
    bigram.follow(bigram.ids(" and")[0], bigram.ids(" Steve")[0])  # loops: Steve Jobs and Steve ...
    case = _case(rewrite=[("Apple was founded by", "Paris")], generation=["Apple was founded by"])
    flu = M.Fluency()
    (base,) = flu.baseline(bigram.lm, [case])
    text = "Apple was founded by" + bigram.tok.decode(greedy(bigram.lm, ["Apple was founded by"], 100)[0])
    assert base == pytest.approx(100 * M.text_fluency(text))  # duplicate prompt counted once
    (r,) = flu.measure(bigram.lm, [case], [base])
    assert r.value == pytest.approx(base) and r.n == 1 and r.details["baseline"] == base
    # a degenerate model (repeats one word) is less fluent
    the = bigram.ids(" the")[0]
    bigram.follow(bigram.ids(" by")[0], the)
    bigram.follow(the, the)
    (r2,) = flu.measure(bigram.lm, [case], [base])
    assert r2.value < 0.5 * base


def test_greedy_stops_at_eos(bigram):
    bigram.teach(EIFFEL + " Paris")
    bigram.follow(bigram.ids(" Paris")[0], bigram.tok.eos_token_id)
    assert greedy(bigram.lm, ["The city of"], 10) == [bigram.ids(" Paris")]


def test_efficacy_gen_prefix_rule(bigram):
    bigram.teach(EIFFEL + " Paris, France")
    cases = [
        _case(rewrite=[(EIFFEL, "Paris")]),
        _case(rewrite=[(EIFFEL, "Paris, France")]),
        _case(target="Rome", rewrite=[(EIFFEL, "Rome")]),
        _case(target="Par", rewrite=[(EIFFEL, "Par")]),  # starts-with on text, as defined
    ]
    res = M.EfficacyGen().measure(bigram.lm, cases, None)
    assert [r.value for r in res] == [1.0, 1.0, 0.0, 1.0]
    # n + 5 tokens: target "Paris" is 1 token, so 6 tokens are generated
    assert res[0].details["generated"][0] == bigram.tok.decode(greedy(bigram.lm, [EIFFEL], 6)[0])


def test_efficacy_gen_budget_is_target_length_plus_five(bigram):
    the = bigram.ids(" the")[0]
    bigram.follow(bigram.ids(EIFFEL)[-1], the)
    bigram.follow(the, the)  # the model says ' the' forever
    res = M.EfficacyGen().measure(bigram.lm, [_case(rewrite=[(EIFFEL, "the")]), _case(rewrite=[(EIFFEL, "the the the")])], None)
    assert [r.value for r in res] == [1.0, 1.0]
    assert res[0].details["generated"][0] == " the" * 6  # n = 1 -> 6 tokens
    assert res[1].details["generated"][0] == " the" * 8  # n = 3 -> 8 tokens
    (r,) = M.EfficacyGen().measure(bigram.lm, [_case(rewrite=[(EIFFEL, "the Paris")])], None)
    assert r.value == 0.0


def test_counterfact_scores_compare_whole_sequence_probabilities(bigram):
    q = "The mother tongue of Catherine Deneuve is"
    new, old = "English", "French"
    e_new, e_old = encode_pair(bigram.tok, q, new), encode_pair(bigram.tok, q, old)
    last = e_new.input_ids[e_new.prompt_len - 1]
    with torch.no_grad():
        bigram.net.table[last, e_new.target_ids[0]] = 3.0
        bigram.net.table[last, e_old.target_ids[0]] = 2.0
    lp = lambda e: sum(bigram.logp(a, b) for a, b in zip(e.input_ids[e.prompt_len - 1 :], e.target_ids))  # noqa: E731
    expect_new_wins = lp(e_new) > lp(e_old)
    case = _case(subject="Catherine Deneuve", target=new, old=old, rewrite=[(q, new)], paraphrase=[(q, None)], neighborhood=[(q, old)])
    (es,) = M.EfficacyScore().measure(bigram.lm, [case], None)
    (ps,) = M.ParaphraseScore().measure(bigram.lm, [case], None)
    (ns,) = M.NeighborhoodScore().measure(bigram.lm, [case], None)
    assert es.value == ps.value == float(expect_new_wins)
    assert ns.value == 1.0 - float(expect_new_wins)
    assert es.details["logprob_margin"][0] == pytest.approx(lp(e_new) - lp(e_old), abs=1e-4)
    # flip the preference
    with torch.no_grad():
        bigram.net.table[last, e_old.target_ids[0]] = 9.0
    assert M.EfficacyScore().measure(bigram.lm, [case], None)[0].value == 0.0
    assert M.NeighborhoodScore().measure(bigram.lm, [case], None)[0].value == 1.0
    # without an old target ES is undefined
    assert M.EfficacyScore().measure(bigram.lm, [_case(rewrite=[(q, new)])], None)[0].value is None


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gpt2"])
def test_metrics_batched_across_cases_equal_one_case_at_a_time(request, family):
    lm = request.getfixturevalue(family)
    cases = [
        _case(rewrite=[(EIFFEL, "Paris")], paraphrase=[("Where is the Eiffel Tower?", "Paris")], locality=[("Apple was founded by", "Steve Jobs"), ("Berlin", None)]),
        _case(subject="Toyota", target="Toyota City", old="Tokyo", rewrite=[("Toyota has its headquarters in", "Toyota City")], locality=[("The Colosseum is located in the city of", "Rome")], neighborhood=[("The Louvre is in", "Paris")]),
        _case(subject="Watts Humphrey", target="University of Michigan", rewrite=[("What university did Watts Humphrey attend?", "University of Michigan")]),
    ]
    for cls in (M.Efficacy, M.Generalization, M.EfficacyGen, M.EfficacyScore, M.NeighborhoodScore):
        together = cls().measure(lm, cases, None)
        alone = [cls().measure(lm, [c], None)[0] for c in cases]
        assert [r.value for r in together] == pytest.approx([r.value for r in alone])
    loc = M.Locality()
    bases = loc.baseline(lm, cases)
    assert [b.argmax for b in bases] == [loc.baseline(lm, [c])[0].argmax for c in cases]
    assert [r.value for r in loc.measure(lm, cases, bases)] == [1.0, 1.0, None]
    with torch.no_grad():
        lm.model.get_submodule(lm.arch.mlp_out.format(1)).weight.mul_(30.0)
    together = loc.measure(lm, cases, bases)
    alone = [loc.measure(lm, [c], [b])[0] for c, b in zip(cases, bases)]
    assert [r.value for r in together] != [1.0, 1.0, None]  # the edit moved something
    assert [r.value for r in together] == pytest.approx([r.value for r in alone])


@pytest.mark.smollm2
def test_smollm2_knows_paris(smollm2):
    case = _case(rewrite=[(EIFFEL, "Paris")], locality=[("The capital of Italy is", "Rome"), ("The Louvre is in", None)])
    assert M.Efficacy().measure(smollm2, [case], None)[0].value == 1.0
    assert M.EfficacyGen().measure(smollm2, [case], None)[0].value == 1.0
    assert M.EfficacyGen().measure(smollm2, [_case(target="Rome", rewrite=[(EIFFEL, "Rome")])], None)[0].value == 0.0
    loc = M.Locality()
    assert loc.measure(smollm2, [case], loc.baseline(smollm2, [case]))[0].value == 1.0
    (flu,) = M.Fluency().baseline(smollm2, [case])
    assert 300 < flu < 700  # the range the papers print (x100)


def test_fluency_unrelated_generates_from_the_locality_prompts_only(bigram):
    bigram.teach("Apple was founded by Steve Jobs")
    case = _case(rewrite=[("Apple was founded by", "Paris")], generation=["Apple was founded by"],
                 locality=[("Steve", None), ("Steve", "Jobs"), ("Apple was", None)])
    flu = M.FluencyUnrelated()
    assert flu.prompts(case) == ["Steve", "Apple was"]
    (base,) = flu.baseline(bigram.lm, [case])
    texts = [p + bigram.tok.decode(c) for p, c in zip(["Steve", "Apple was"], greedy(bigram.lm, ["Steve", "Apple was"], 100))]
    assert base == pytest.approx(sum(100 * M.text_fluency(t) for t in texts) / 2)
    assert base != pytest.approx(M.Fluency().baseline(bigram.lm, [case])[0])
    spec = {s.name: s for s in kedsl_metrics.register_metrics()}["fluency_unrelated"]
    assert spec.relative_tolerance == 0.10 and spec.needs_baseline and spec.prompts_field == "locality"
