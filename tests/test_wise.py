"""WISE (plugins/kedsl_wise) on tiny in-process models: an edit makes its target the argmax
while unrelated prompts pass through bit-identically (the router keeps them on the main
memory), the weights are never touched, undo removes the memory and its hook exactly,
reverting one edit of a sequence gives the memory the others alone give, shards get
their own masks and merge by TIES, KV-cached decoding routes as the teacher-forced pass
does, and the memory survives save and reload."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import method_params, sharpen
from test_grace import edited, logits

import kedsl_wise
from kedsl.editing.outcome import EditContext
from kedsl.editing.request import EditRequest
from kedsl.model.journal import WeightJournal
from kedsl.toolkit.scoring import greedy_ids, teacher_forced
from kedsl_wise.memory import WiseMemory, shard_mask, side_memory, ties_merge
from kedsl_wise.wise import unrelated_prompts

LAYER = 2
FAST = {"layer": LAYER, "lr": 1.0, "steps": 60, "unrelated": 8}
EDIT = EditRequest(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux", target="French")
SECOND = EditRequest(subject="Toyota", prompt="Toyota has its headquarters in", target="Paris")
THIRD = EditRequest(subject="the Colosseum", prompt="The city of the Colosseum", target="Berlin")


def run(model, requests=(EDIT,), **over):
    from kedsl_wise.wise import Wise

    ctx = EditContext(weights=WeightJournal(model.model), cache_dir=Path("/tmp"), seed=0)
    return Wise().apply(model, list(requests), method_params(kedsl_wise, "wise", FAST, **over), ctx)


def hooks(model):
    return len(model.mlp_out(LAYER)._forward_hooks)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_an_edit_is_answered_by_the_side_memory_and_unrelated_prompts_pass_through(fixture, request):
    model = sharpen(request.getfixturevalue(fixture))
    unrelated = unrelated_prompts([EDIT], FAST["unrelated"], 0)  # the prompts the router was trained to leave alone
    fp, before = model.fingerprint(), {t: logits(model, [t]) for t in unrelated}
    assert not edited(model, EDIT)
    outcome = run(model)
    assert edited(model, EDIT)
    for text in unrelated:
        assert torch.equal(logits(model, [text]), before[text]), text
    assert model.fingerprint() == fp and outcome.changes == {}  # the main memory is untouched
    (att,) = outcome.attachments
    assert att.kind == "wise_memory" and model.attachments == [att]
    info = outcome.info
    assert info["threshold"] == pytest.approx(0.88 * info["edit_score"]) and info["threshold"] > info["unrelated_score_max"]
    mask = att.mask()
    assert att.values.numel() == int(mask.sum()) and 0.15 < mask.float().mean() < 0.25  # mask_ratio 0.2
    assert all(p.requires_grad for p in model.model.parameters())  # flags restored


def test_undo_removes_the_memory_and_its_hook_exactly(tiny_llama):
    model = sharpen(tiny_llama)
    texts = [EDIT.prompt, SECOND.prompt, "Berlin"]
    before = logits(model, texts)
    outcome = run(model)
    after = logits(model, texts)
    assert hooks(model) == 1 and not torch.equal(after, before)
    outcome.undo(model)
    assert torch.equal(logits(model, texts), before) and hooks(model) == 0 and model.attachments == []
    outcome.redo(model)
    assert torch.equal(logits(model, texts), after)


def test_reverting_one_edit_of_a_sequence_leaves_the_memory_the_others_give(tiny_llama, tiny_tokenizer):
    from conftest import make_tiny_llama

    model = sharpen(tiny_llama)
    first, second, third = (run(model, [r], shard_edits=2, density=1.0) for r in (EDIT, SECOND, THIRD))
    assert [a.shard for o in (first, second, third) for a in o.attachments] == [0, 0, 1]
    assert edited(model, EDIT) and edited(model, SECOND) and edited(model, THIRD)
    second.undo(model)  # what `kedsl revert` does to the middle edit
    # the same two attachments installed on a fresh copy of the model, in the same order
    other = sharpen(make_tiny_llama(tiny_tokenizer))
    for o in (first, third):
        WiseMemory.from_state(*o.attachments[0].state()).attach(other)
    mine, theirs = side_memory(model.mlp_out(LAYER)), side_memory(other.mlp_out(LAYER))
    assert torch.equal(mine.delta(), theirs.delta()) and mine.threshold() == theirs.threshold()
    texts = [EDIT.prompt, SECOND.prompt, THIRD.prompt]
    assert torch.equal(logits(model, texts), logits(other, texts))


def test_shards_have_their_own_masks_and_merge_by_ties():
    a, b = shard_mask((8, 16), 0.2, 1), shard_mask((8, 16), 0.2, 2)
    assert torch.equal(a, shard_mask((8, 16), 0.2, 1)) and not torch.equal(a, b)
    x = torch.tensor([[1.0, -2.0, 0.5, 0.0]])
    assert ties_merge([x], 0.5) is x  # one shard is taken as it is
    y = torch.tensor([[3.0, 1.0, -0.1, 4.0]])
    # density 1: signs elected by the sum, agreeing entries averaged, the others dropped
    assert torch.equal(ties_merge([x, y], 1.0), torch.tensor([[2.0, -2.0, 0.5, 4.0]]))
    # density 0.5 keeps each shard's two largest entries: x's 1 and -2, y's 3 and 4
    assert torch.equal(ties_merge([x, y], 0.5), torch.tensor([[2.0, -2.0, 0.0, 4.0]]))


def test_kv_cached_decoding_routes_like_the_teacher_forced_pass(tiny_llama):
    model = sharpen(tiny_llama)
    request = EditRequest(subject="Toyota", prompt="Toyota has its headquarters in", target="Paris and Berlin")
    run(model, [request])
    s = teacher_forced(model, [(request.prompt, request.target)])[0]
    assert s.predicted == s.target_ids
    ids = model.tokenizer(request.prompt)["input_ids"]
    (generated,) = greedy_ids(model, [ids], len(s.target_ids))
    assert list(generated) == list(s.target_ids)


def routed_after_answer(model, request) -> bool:
    """Whether the router sends the position after ``request``'s answer (its last token)
    to the side memory."""
    from kedsl.toolkit.gradients import encode_answers
    from kedsl_wise.wise import module_io

    path = model.mlp_out_weight_name(LAYER).rsplit(".", 1)[0]
    memory = side_memory(model.module(path))
    batch = encode_answers(model, [(request.prompt, request.target)])
    x, o = module_io(model, path, {"input_ids": batch.ids, "attention_mask": batch.mask})
    last = int(batch.mask.sum()) - 1
    score = (x[0, last] @ memory.delta().T).norm() / o[0, last].norm()
    return bool(score > memory.threshold())


@pytest.mark.parametrize("after_answer", [True, False])
def test_the_router_stays_off_after_the_answer(tiny_llama, after_answer):
    # generation that kept routing after the answer would repeat it
    model = sharpen(tiny_llama)
    request = EditRequest(subject="Toyota", prompt="Toyota has its headquarters in", target="Paris and Berlin")
    run(model, [request], after_answer=after_answer)
    assert edited(model, request)
    assert routed_after_answer(model, request) is not after_answer


def test_the_memory_survives_save_and_reload(tiny_llama, tmp_path):
    from kedsl.model.loading import load_saved_model
    from kedsl.model.saving import save_model

    model = sharpen(tiny_llama)
    run(model)
    texts = [EDIT.prompt, "Berlin"]
    expected = logits(model, texts)
    save_model(model, tmp_path / "edited", {})
    again = load_saved_model(tmp_path / "edited")
    assert [a.kind for a in again.attachments] == ["wise_memory"]
    assert torch.equal(logits(again, texts), expected)


def test_replaying_the_blocks_below_trains_the_same_memory_as_full_passes(tiny_tokenizer, monkeypatch):
    import contextlib

    import kedsl_wise.wise as W
    from conftest import make_tiny_llama

    replayed = run(sharpen(make_tiny_llama(tiny_tokenizer))).attachments[0]
    monkeypatch.setattr(W, "below_replayed", lambda model, layer, go: contextlib.nullcontext())
    full = run(sharpen(make_tiny_llama(tiny_tokenizer))).attachments[0]
    assert torch.equal(replayed.values, full.values) and replayed.score == full.score


def test_questions_give_a_new_draw_for_each_edit_from_the_shipped_corpus():
    from kedsl.toolkit.stats import SHIPPED_CORPORA

    corpus = set(SHIPPED_CORPORA["questions"].read_text(encoding="utf-8").splitlines())
    first, again, second = (unrelated_prompts([EDIT], 16, 0, "questions", draw=d) for d in (0, 0, 1))
    assert first == again and first != second  # seeded, and keyed by the draw
    assert len(first) == 16 and set(first) <= corpus and set(second) <= corpus
    assert unrelated_prompts([EDIT], 16, 0) == unrelated_prompts([EDIT], 16, 0, draw=5)  # known facts: one draw for every edit
    edited = EditRequest(subject="x", prompt=first[0], target="y")
    assert first[0] not in unrelated_prompts([edited], 1000, 0, "questions")  # never an edited prompt


@pytest.mark.parametrize("margin", ["this_edit", "all_edits"])
def test_the_margin_against_all_edits_keeps_unrelated_prompts_below_the_routers_threshold(tiny_llama, margin):
    model = sharpen(tiny_llama)
    (weak,) = run(model, (EDIT,), margin_against=margin).attachments
    assert weak.score > 15.0
    weak.score = 10.0  # as if the first edit had reached about half its score: the router's threshold halves
    info = run(model, (SECOND,), margin_against=margin).info
    assert info["threshold"] == pytest.approx(0.88 * weak.score)
    if margin == "all_edits":
        assert info["unrelated_score_max"] < info["threshold"]  # unrelated prompts stay on the main memory
    else:
        assert info["unrelated_score_max"] > info["threshold"]  # separated from its own score only: they would route
