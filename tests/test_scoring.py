"""Batched scoring (kedsl.toolkit.scoring) equals one-prompt-at-a-time scoring on tiny models."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kedsl.toolkit.scoring import TFScore, greedy, teacher_forced  # noqa: E402
from kedsl.toolkit.tokens import encode_pair  # noqa: E402

# Prompts of very different lengths, so batches are padded heavily.
PAIRS = [
    ("The Eiffel Tower is located in the city of", "Paris"),
    ("Apple was founded by", "Steve Jobs"),
    ("The mother tongue of Catherine Deneuve is", "French"),
    ("What university did Watts Humphrey attend?", "University of Michigan"),
    ("Toyota has its headquarters in", "Toyota City"),
    ("the", "Colosseum is located in the city of Rome"),
    ("The Louvre is located in the city of ", "Paris."),  # prompt ends in a space
]


def _reference_tf(lm, prompt: str, target: str) -> TFScore:
    """One unpadded forward per pair, full logits: the straightforward implementation."""
    enc = encode_pair(lm.tokenizer, prompt, target)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([enc.input_ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    rows = [logp[p - 1] for p in enc.target_positions]
    return TFScore(
        target_ids=enc.target_ids,
        predicted=[int(r.argmax()) for r in rows],
        logprobs=[float(r[t]) for r, t in zip(rows, enc.target_ids)],
    )


def _reference_greedy(lm, prompt: str, n: int) -> list[int]:
    """Greedy without cache or padding: recompute the whole sequence every step."""
    ids = list(lm.tokenizer(prompt)["input_ids"])
    new = []
    with torch.no_grad():
        for _ in range(n):
            t = int(lm.model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if t == lm.tokenizer.eos_token_id:
                break
            new.append(t)
    return new


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("batch_size", [3, 32])
def test_teacher_forced_batched_equals_single(request, family, batch_size):
    lm = request.getfixturevalue(family)
    got = teacher_forced(lm, PAIRS, batch_size=batch_size)
    assert len(got) == len(PAIRS)
    for (p, t), g in zip(PAIRS, got):
        ref = _reference_tf(lm, p, t)
        assert g.target_ids == ref.target_ids
        assert g.predicted == ref.predicted
        assert g.logprobs == pytest.approx(ref.logprobs, abs=1e-4)
        assert g.accuracy == ref.accuracy


def test_teacher_forced_uses_joint_span(tiny_llama):
    tok = tiny_llama.tokenizer
    (s,) = teacher_forced(tiny_llama, [("The Louvre is located in the city of", "Paris")])
    # the leading-space rule: " Paris" is tokenized as it follows the prompt
    assert tok.decode(s.target_ids) == " Paris"
    assert s.target_ids != tok("Paris", add_special_tokens=False)["input_ids"]
    # a prompt ending in a space gives the same text; the token " Paris" straddles the
    # boundary and counts as a target token
    (s2,) = teacher_forced(tiny_llama, [("The Louvre is located in the city of ", "Paris")])
    assert s2.target_ids == s.target_ids


def test_accuracy_counts_matching_positions():
    s = TFScore(target_ids=[1, 2, 3, 4], predicted=[1, 9, 3, 9], logprobs=[-1.0, -2.0, -0.5, -0.5])
    assert s.accuracy == 0.5
    assert s.logprob == -4.0


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gpt2"])
def test_greedy_batched_equals_single(request, family):
    lm = request.getfixturevalue(family)
    prompts = [p for p, _ in PAIRS]
    batched = greedy(lm, prompts, max_new_tokens=8, batch_size=32)
    for p, b in zip(prompts, batched):
        assert [b] == greedy(lm, [p], max_new_tokens=8, batch_size=1)
        assert b == _reference_greedy(lm, p, 8)
    assert all(len(b) <= 8 for b in batched)
    assert any(len(b) == 8 for b in batched)


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gpt2"])
def test_greedy_hands_the_cache_by_the_name_the_model_takes(request, family):
    """Recent transformers renamed ``past_key_values`` to ``cache`` and warn on the old
    name (users saw the FutureWarning on every `apply`); the decoding loop must use
    whichever name the forward takes, silently, and still reuse the cache."""
    import warnings

    from kedsl.toolkit.activations import cache_argument

    lm = request.getfixturevalue(family)
    calls = []
    hook = lm.model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = greedy(lm, [PAIRS[0][0]], max_new_tokens=4, batch_size=1)
    finally:
        hook.remove()
    assert out[0] == _reference_greedy(lm, PAIRS[0][0], 4)
    assert cache_argument(lm.model) is not None
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    assert calls[1:] == [1] * (len(calls) - 1)  # after the prompt, one new token per step: the cache is used
