"""UltraEdit (plugins/kedsl_ultraedit) on tiny in-process models: the update solves its ridge
system, the lifelong statistics accumulate exactly (as if every turn's factors had come at
once), are saved with the model, reloaded, rolled back with a failed edit and continued;
edits land on LLaMA and GPT-2 (transposed weights); turns are deterministic."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import STATS_CORPUS, check_state_lifecycle, method_params, sharpen

import kedsl_ultraedit
from kedsl.editing.outcome import EditContext
from kedsl.editing.request import EditRequest
from kedsl.model.journal import WeightJournal
from kedsl.toolkit.gradients import encode_answers, fold_moments, linear_factors, standardise
from kedsl.toolkit.scoring import teacher_forced

REQUESTS = [
    EditRequest(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux", target="French"),
    EditRequest(subject="Toyota", prompt="The headquarters of Toyota", target="Paris"),
]
FAST = {"layers": [1, 2], "lr": 0.01, "steps": 3, "ridge": 1e-2}


def params(**over):
    return method_params(kedsl_ultraedit, "ultraedit", FAST, **over)


def run(model, requests=REQUESTS, state=None, **over):
    from kedsl_ultraedit.ultraedit import UltraEdit

    ctx = EditContext(weights=WeightJournal(model.model), cache_dir=Path("/tmp"), seed=0, state=state if state is not None else {})
    return UltraEdit().apply(model, list(requests), params(**over), ctx), ctx


def test_the_update_solves_its_ridge_system():
    from kedsl_ultraedit.ultraedit import ridge_update

    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 6, generator=g, dtype=torch.float64)
    v = torch.randn(9, 4, generator=g, dtype=torch.float64)
    c = torch.randn(6, 6, generator=g, dtype=torch.float64)
    c = c @ c.T
    for preserved in (None, 3.0 * c):
        dw = ridge_update(x, v, 0.5, preserved)
        a = x.T @ x + 0.5 * torch.eye(6, dtype=torch.float64) + (0 if preserved is None else preserved)
        residual = a @ dw.T - x.T @ v
        assert float(residual.abs().max()) < 1e-10
    # with no ridge and more features than tokens, every token gets exactly its change
    wide = torch.randn(3, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(wide @ ridge_update(wide, v[:3], 1e-12).T, v[:3], atol=1e-6, rtol=0)


def test_requested_changes_follow_the_normalised_gradient():
    from kedsl_ultraedit.ultraedit import requested_changes

    g = torch.Generator().manual_seed(1)
    x, d = torch.randn(7, 5, generator=g), torch.randn(7, 3, generator=g)
    # with statistics from many tokens: the paper's standardisation (the prior's weight fades)
    many = torch.randn(20000, 8, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, 8) + torch.linspace(-1, 1, 8)
    mean, m2, count = torch.zeros(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    fold_moments(mean, m2, count, many)
    v = requested_changes(x, d, mean, m2, count, lr=0.1)
    zn = standardise(torch.cat([x, d], 1).double(), mean, m2 / count)
    torch.testing.assert_close(v, -0.1 * zn[:, :5].pow(2).sum(1, keepdim=True) * zn[:, 5:], rtol=2e-2, atol=1e-3)
    # a model's very first token (no variance yet) still asks for a change against its gradient
    mean1, m21, count1 = torch.zeros(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    fold_moments(mean1, m21, count1, torch.cat([x[:1], d[:1]], 1))
    v1 = requested_changes(x[:1], d[:1], mean1, m21, count1, lr=0.1)
    assert float(v1.norm()) > 0
    torch.testing.assert_close(v1 / v1.norm(), -d[:1].double() / d[:1].double().norm())


def test_running_statistics_merge_exactly():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(40, 6, generator=g, dtype=torch.float64) * 3 + 1
    mean, m2, count = torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for part in (z[:1], z[1:17], z[17:]):
        fold_moments(mean, m2, count, part)
    assert int(count) == 40
    torch.testing.assert_close(mean, z.mean(0))
    torch.testing.assert_close(m2 / count, z.var(0, unbiased=False))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_edits_land_and_the_statistics_accumulate_over_turns(fixture, request):
    model = sharpen(request.getfixturevalue(fixture))
    pairs = [(r.prompt, r.target) for r in REQUESTS]
    assert not all(s.predicted == s.target_ids for s in teacher_forced(model, pairs))
    names = kedsl_ultraedit.config.UltraEditConfig.from_params(params()).weight_names(model)
    assert len(names) == (4 if fixture == "tiny_llama" else 2)  # gate+up per layer; GPT-2's c_fc
    modules = {n: model.module(n.rsplit(".", 1)[0]) for n in names}
    # the first step's factors of each turn are what the statistics take
    first = linear_factors(model, encode_answers(model, pairs[:1]), modules, answer_only=True)
    state: dict = {}
    outcome, _ = run(model, REQUESTS[:1], state)
    assert sorted(outcome.changes) == sorted(names)
    second = linear_factors(model, encode_answers(model, pairs[1:]), modules, answer_only=True)
    run(model, REQUESTS[1:], state)
    for s in teacher_forced(model, pairs):  # both edits hold after the second turn
        assert s.predicted == s.target_ids
    for n in names:
        z = torch.cat([torch.cat([first[n][0], first[n][1]], 1), torch.cat([second[n][0], second[n][1] * len(second[n][1])], 1)]).double()
        z[: len(first[n][0]), first[n][0].shape[1]:] *= len(first[n][0])  # per-token gradients (the loss is a mean)
        assert int(state[f"{n}.count"]) == z.shape[0]
        torch.testing.assert_close(state[f"{n}.mean"], z.mean(0), rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(state[f"{n}.m2"] / z.shape[0], z.var(0, unbiased=False), rtol=1e-5, atol=1e-9)


def test_a_turn_is_deterministic_and_undone_exactly(tiny_llama):
    model = sharpen(tiny_llama)
    before = model.fingerprint()
    outcome, _ = run(model)
    edited = model.fingerprint()
    outcome.undo(model)
    assert model.fingerprint() == before
    run(model)
    assert model.fingerprint() == edited


def test_preserving_general_text_moves_its_outputs_less(tiny_llama):
    from kedsl.toolkit.stats import second_moment

    model = sharpen(tiny_llama)
    plain, _ = run(model, steps=1)
    plain.undo(model)
    kept, _ = run(model, steps=1, preserve=50.0, stats_corpus=STATS_CORPUS, mom2_samples=800)
    name = model.mlp_in_weight_names(1)[0]
    c = second_moment(model, 1, STATS_CORPUS, 800, 0, site="mlp_in").double()
    moved = lambda o: float(torch.trace(o.changes[name].delta.double() @ c @ o.changes[name].delta.double().T))  # noqa: E731
    assert moved(kept) < 0.5 * moved(plain)


@pytest.mark.parametrize("retain", [0.0, 1.0])
def test_statistics_are_saved_reloaded_rolled_back_and_continued(retain, tiny_tokenizer, tmp_path):
    first, last = check_state_lifecycle(kedsl_ultraedit, "ultraedit", {**FAST, "retain": retain}, tiny_tokenizer, tmp_path)
    # mean, m2, count per projection (gate, up of layers 1 and 2), and with retain the keys' sum
    assert len(first) == (4 if retain else 3) * 4
    counts = [k for k in first if k.endswith(".count")]
    assert all(float(last[k]) > float(first[k]) for k in counts)  # the kept edit's tokens were folded in
    for k in (k for k in first if k.endswith(".keys")):  # the kept edit's keys were added
        assert float(torch.trace(last[k])) > float(torch.trace(first[k]))


def test_retain_sums_earlier_keys_and_holds_their_outputs(tiny_llama):
    model = sharpen(tiny_llama)
    names = kedsl_ultraedit.config.UltraEditConfig.from_params(params()).weight_names(model)
    modules = {n: model.module(n.rsplit(".", 1)[0]) for n in names}
    pairs = [(r.prompt, r.target) for r in REQUESTS]
    first_keys = linear_factors(model, encode_answers(model, pairs[:1]), modules, answer_only=True)
    moved = {}
    for retain in (0.0, 100.0):
        state: dict = {}
        one, _ = run(model, REQUESTS[:1], state, retain=retain)
        second_keys = linear_factors(model, encode_answers(model, pairs[1:]), modules, answer_only=True)
        two, _ = run(model, REQUESTS[1:], state, retain=retain)
        if retain:
            for n in names:  # the running sum of every turn's X^T X (the first step's inputs)
                x = torch.cat([first_keys[n][0], second_keys[n][0]]).double()
                torch.testing.assert_close(state[f"{n}.keys"], x.T @ x, rtol=1e-5, atol=1e-6)
        # how far the second turn moved the first edit's projection outputs
        moved[retain] = sum(float((first_keys[n][0].double() @ two.changes[n].delta.double().T).norm()) for n in names)
        two.undo(model)
        one.undo(model)
    assert moved[100.0] < 0.2 * moved[0.0]


def test_retain_scale_turn_weighs_earlier_keys_as_one_turn_of_this_size(tiny_llama):
    # "turn" must equal "sum" with retain scaled by (this turn's tokens / the earlier turns'),
    # and must not be "sum" itself: the second turn is five times as long as the first, so
    # "turn" holds the first edit's outputs harder
    model = sharpen(tiny_llama)
    names = kedsl_ultraedit.config.UltraEditConfig.from_params(params()).weight_names(model)
    longer = EditRequest(subject="Toyota", prompt="The headquarters of Toyota", target="Paris in France")
    deltas, moved, counts = {}, {}, {}
    for scale, retain in (("turn", 1.0), ("sum", None), ("sum", 1.0)):
        state: dict = {}
        one, _ = run(model, REQUESTS[:1], state, retain=1.0, retain_scale=scale)
        earlier = float(state[f"{names[0]}.count"])
        first = {n: state[f"{n}.keys"].clone() for n in names}  # the first turn's K^T K
        if retain is None:  # the equivalent plain sum, from the token counts of the "turn" run
            retain = counts["now"] / counts["earlier"]
        two, _ = run(model, [longer], state, retain=retain, retain_scale=scale)
        counts = {"earlier": earlier, "now": float(state[f"{names[0]}.count"]) - earlier} if scale == "turn" else counts
        deltas[(scale, retain)] = {n: two.changes[n].delta.double().clone() for n in names}
        # |K dW^T|^2 = trace(dW K^T K dW^T): how far the second turn moved the first edit's outputs
        moved[(scale, retain)] = sum(float(torch.trace(d @ first[n] @ d.T)) for n, d in deltas[(scale, retain)].items())
        two.undo(model)
        one.undo(model)
    assert counts["now"] > 2 * counts["earlier"]
    (turn, equivalent, plain) = deltas.values()
    for n in names:
        torch.testing.assert_close(turn[n], equivalent[n], rtol=1e-4, atol=1e-7)
    moved_turn, _, moved_sum = moved.values()
    assert moved_turn < 0.8 * moved_sum


def test_context_prefixes_train_each_edit_in_more_contexts(tiny_llama):
    model = sharpen(tiny_llama)
    plain, _ = run(model, steps=1)
    plain.undo(model)
    prefixed, _ = run(model, steps=1, context_count=2, context_lengths=[3])
    # the same answers behind the plain prompt and two generated prefixes: three times the tokens
    assert prefixed.info["answer_tokens"] == 3 * plain.info["answer_tokens"]
    assert prefixed.info["contexts"] == 3 and plain.info["contexts"] == 1


def test_the_papers_gate_up_pattern_edits_gates_early_and_ups_late(tiny_llama, tiny_gpt2):
    from kedsl.errors import UsageError
    from kedsl_ultraedit.config import UltraEditConfig

    cfg = UltraEditConfig.from_params(params(projections="gate_up", gate_layers=[1], up_layers=[2]))
    names = cfg.weight_names(tiny_llama)
    assert names == [n for n in tiny_llama.mlp_in_weight_names(1) if ".gate_proj." in n] + [n for n in tiny_llama.mlp_in_weight_names(2) if ".up_proj." in n]
    outcome, _ = run(sharpen(tiny_llama), projections="gate_up", gate_layers=[1], up_layers=[2])
    assert sorted(outcome.changes) == sorted(names)
    with pytest.raises(UsageError, match="gated MLP"):  # GPT-2's MLP has one input projection
        cfg.weight_names(tiny_gpt2)
    with pytest.raises(UsageError, match="only with projections='gate_up'"):
        UltraEditConfig.from_params(params(gate_layers=[1]))
    with pytest.raises(UsageError, match="needs gate_layers or up_layers"):
        UltraEditConfig.from_params(params(projections="gate_up"))


def test_check_refuses_gate_layers_without_the_gate_up_pattern(tmp_path):
    from click.testing import CliRunner

    from kedsl.cli import main

    script = tmp_path / "s.ke"
    script.write_text('model "smollm2-135m";\nedit "Eiffel Tower" located_in -> "Rome" using ultraedit(gate_layers=1..2);\n')
    r = CliRunner().invoke(main, ["check", str(script)])
    assert r.exit_code == 2 and "only with projections='gate_up'" in r.output and "Traceback" not in r.output
    script.write_text('model "smollm2-135m";\nedit "Eiffel Tower" located_in -> "Rome" using ultraedit(projections="gate_up", gate_layers=1..2);\n')
    assert CliRunner().invoke(main, ["check", str(script)]).exit_code == 0


#: one prompt that ends with its subject ("Toyota") and one that does not ("Eiffel Tower")
SUBJECT_REQUESTS = [REQUESTS[1], EditRequest(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of", target="Rome")]


def subject_batch(model):
    """:data:`SUBJECT_REQUESTS` encoded with their subjects located, and their pairs."""
    pairs = [(r.prompt, r.target) for r in SUBJECT_REQUESTS]
    return encode_answers(model, pairs, [r.subject for r in SUBJECT_REQUESTS]), pairs


def test_subject_positions_add_the_subjects_last_token(tiny_llama):
    from kedsl.toolkit.tokens import encode_with_subject

    model = sharpen(tiny_llama)
    requests = SUBJECT_REQUESTS
    batch, pairs = subject_batch(model)
    keep = batch.predicting_and_subject()
    added = 0
    for row, r in enumerate(requests):  # the subject's last token, unless it already predicts the answer
        last = encode_with_subject(model.tokenizer, r.prompt, r.subject, r.target).subject_last
        inside = bool(batch.predicting()[row, last])
        assert int(batch.subject_last[row]) == last and bool(keep[row, last])
        assert int(keep[row].sum()) == int(batch.predicting()[row].sum()) + (not inside)
        added += not inside
    assert added == 1  # "Toyota" ends its prompt, "Eiffel Tower" does not
    # a subject the prompt does not contain adds nothing
    other = encode_answers(model, pairs[:1], ["Louvre"])
    assert int(other.subject_last[0]) == -1 and torch.equal(other.predicting_and_subject(), other.predicting())
    plain, _ = run(model, requests, steps=1)
    plain.undo(model)
    keyed, _ = run(model, requests, steps=1, positions="subject")
    assert keyed.info["answer_tokens"] == plain.info["answer_tokens"] + added


def test_subject_key_asks_the_first_answer_token_of_the_subject(tiny_llama):
    model = sharpen(tiny_llama)
    requests = SUBJECT_REQUESTS
    batch, pairs = subject_batch(model)
    keyed = batch.subject_keyed()
    both = batch.predicting_and_subject()
    for row in range(len(requests)):
        prompt_end = int((batch.labels[row] != -100).nonzero()[0]) - 1
        subject = int(batch.subject_last[row])
        assert bool(keyed[row, subject])
        if subject == prompt_end:  # "Toyota" ends its prompt: nothing to take out
            assert torch.equal(keyed[row], both[row])
        else:  # the prompt's end is gone, every later answer position stays
            assert not keyed[row, prompt_end]
            assert torch.equal(keyed[row, prompt_end + 1 :], both[row, prompt_end + 1 :])
            assert int(keyed[row].sum()) == int(both[row].sum()) - 1
    # a subject the prompt does not contain leaves the row as it was
    other = encode_answers(model, pairs[:1], ["Louvre"])
    assert torch.equal(other.subject_keyed(), other.predicting())
    base = model.model.state_dict()["model.layers.1.mlp.up_proj.weight"].clone()
    outcome, _ = run(model, requests, steps=1, positions="subject_key")
    assert outcome.info["answer_tokens"] == int(keyed.sum())
    assert not torch.equal(model.model.state_dict()["model.layers.1.mlp.up_proj.weight"], base)
