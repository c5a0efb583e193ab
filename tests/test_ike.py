"""IKE (plugins/kedsl_ike): edits as an in-context memory, on tiny in-process models.

On a random-init model similarity means little, so the tests retrieve with a threshold
only an identical prompt reaches (its embedding is the fact's own up to batching noise),
or with -1 (everything) where the pool's composition is what is tested.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import sharpen

import kedsl_ike
from kedsl.model.attachments import uninstall
from kedsl.editing.outcome import EditContext
from kedsl.editing.request import EditRequest
from kedsl.model.journal import WeightJournal
from kedsl.registry.params import resolve_params
from kedsl.registry import Registry
from kedsl.toolkit.scoring import encode_prompt, greedy, greedy_ids, teacher_forced

EXACT = 0.9999  # only the stored prompt itself (cosine 1 up to float noise) is retrieved
EIFFEL = EditRequest(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of", target="Rome")
DARRIEUX = EditRequest(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux is", target="German")
APPLE = EditRequest(subject="Apple", prompt="Apple was founded by", target="Bill Gates")
UNRELATED = ("Toyota has its headquarters in", "Tokyo")


def edit(model, requests, **over):
    from kedsl_ike.ike import IKE

    params = resolve_params(kedsl_ike.SPEC.params, {"layer": 1, "threshold": EXACT, **over})
    context = EditContext(weights=WeightJournal(model.model), cache_dir=Path("/tmp"), seed=0)
    return IKE().apply(model, list(requests), params, context), context


def fed_text(model, prompt: str) -> str:
    return model.tokenizer.decode(model.contextualize(encode_prompt(model.tokenizer, prompt)))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


def test_the_memory_changes_what_the_edited_prompt_is_fed_and_nothing_else(tiny_llama):
    model = sharpen(tiny_llama)
    pairs = [(EIFFEL.prompt, EIFFEL.target), UNRELATED]
    before_scores = teacher_forced(model, pairs, batch_size=1)
    before_gen = greedy(model, [p for p, _ in pairs], 6, batch_size=1)
    weights, fp = snapshot(model), model.fingerprint()

    outcome, _ = edit(model, [EIFFEL], demonstrations=1)

    assert model.fingerprint() == fp and outcome.changes == {}
    assert all(torch.equal(v, weights[k]) for k, v in model.model.state_dict().items())
    from kedsl_ike.ike import DEMONSTRATIONS

    demo = DEMONSTRATIONS[0]
    expected = f"New Fact: {demo.fact.text()}\n{demo.prompt} {demo.answer}\n\nNew Fact: {EIFFEL.prompt} {EIFFEL.target}\n{EIFFEL.prompt}"
    assert fed_text(model, EIFFEL.prompt) == expected
    # what scoring and generation feed: the prompt after the prefix
    seen: list[list[int]] = []
    hook = model.model.register_forward_pre_hook(lambda m, a, k: seen.append(k["input_ids"][0].tolist()), with_kwargs=True)
    try:
        after_scores = teacher_forced(model, pairs, batch_size=1)
        after_gen = greedy(model, [p for p, _ in pairs], 6, batch_size=1)
    finally:
        hook.remove()
    fed = [model.tokenizer.decode(ids) for ids in seen]
    assert any(t.startswith("New Fact:") and t.endswith(EIFFEL.prompt) for t in fed)  # greedy's first step
    assert any(t.startswith("New Fact:") and t.endswith(f"{EIFFEL.prompt} {EIFFEL.target}") for t in fed)
    assert after_scores[0].logprobs != before_scores[0].logprobs
    # the unrelated prompt: fed unchanged, so bit-identical scores and generation
    assert fed_text(model, UNRELATED[0]) == UNRELATED[0]
    assert after_scores[1].logprobs == before_scores[1].logprobs and after_scores[1].predicted == before_scores[1].predicted
    assert after_gen[1] == before_gen[1]

    # with a threshold everything reaches, the unrelated prompt gets the fact too: the
    # threshold, not chance, is what kept it unchanged above
    outcome.undo(model)
    edit(model, [EIFFEL], threshold=-1.0, demonstrations=0)
    assert fed_text(model, UNRELATED[0]) == f"New Fact: {EIFFEL.prompt} {EIFFEL.target}\n{UNRELATED[0]}"


def test_undo_and_rollback_remove_the_memory(tiny_llama):
    model = sharpen(tiny_llama)
    ids = encode_prompt(model.tokenizer, EIFFEL.prompt)
    before = teacher_forced(model, [(EIFFEL.prompt, EIFFEL.target)])[0]
    outcome, _ = edit(model, [EIFFEL])
    assert model.contextualize(ids) != ids
    from kedsl.model.attachments import detached

    with detached(model):  # what fingerprint() and saving see: the plain model
        assert model.contextualize(ids) == ids
    assert model.contextualize(ids) != ids
    outcome.undo(model)
    assert model.attachments == [] and model.contextualize(ids) == ids
    assert teacher_forced(model, [(EIFFEL.prompt, EIFFEL.target)])[0].logprobs == before.logprobs
    outcome.redo(model)
    assert model.contextualize(ids) != ids
    outcome.undo(model)

    _, context = edit(model, [EIFFEL])
    assert model.contextualize(ids) != ids
    context.rollback(model)  # what the executor does when an expectation fails
    assert model.attachments == [] and model.contextualize(ids) == ids


def test_sequential_memories_retrieve_as_one_pool(tiny_llama):
    model = tiny_llama
    first, _ = edit(model, [EIFFEL], threshold=-1.0, top_k=2, demonstrations=0)
    second, _ = edit(model, [DARRIEUX], threshold=-1.0, top_k=2, demonstrations=0)
    assert len(model.attachments) == 2
    # one prefix with the top 2 over both memories, the prompt's own fact last (next to it)
    text = fed_text(model, EIFFEL.prompt)
    assert text.count("New Fact:") == 2
    assert text.endswith(f"New Fact: {EIFFEL.prompt} {EIFFEL.target}\n{EIFFEL.prompt}")
    assert f"New Fact: {DARRIEUX.prompt} {DARRIEUX.target}" in text
    assert fed_text(model, DARRIEUX.prompt).endswith(f"New Fact: {DARRIEUX.prompt} {DARRIEUX.target}\n{DARRIEUX.prompt}")

    # removing the first memory (the one that prepends) leaves the second's fact, alone
    uninstall(model, first.attachments[0])
    text = fed_text(model, EIFFEL.prompt)
    assert text.count("New Fact:") == 1 and text.startswith(f"New Fact: {DARRIEUX.prompt} {DARRIEUX.target}\n")
    second.undo(model)
    assert fed_text(model, EIFFEL.prompt) == EIFFEL.prompt


def test_top_k_and_threshold_select_within_the_pool(tiny_llama):
    model = tiny_llama
    edit(model, [EIFFEL], top_k=1, demonstrations=0)
    edit(model, [DARRIEUX], top_k=1, demonstrations=0)
    for req, other in ((EIFFEL, DARRIEUX), (DARRIEUX, EIFFEL)):
        text = fed_text(model, req.prompt)
        assert text == f"New Fact: {req.prompt} {req.target}\n{req.prompt}"
        assert other.target not in text
    assert fed_text(model, UNRELATED[0]) == UNRELATED[0]


def test_a_bos_token_stays_first(tiny_tokenizer):
    import copy

    from conftest import make_tiny_llama
    from tokenizers.processors import TemplateProcessing

    from kedsl_ike.ike import Fact, prefix_text

    tok = copy.deepcopy(tiny_tokenizer)
    tok.bos_token = "<|endoftext|>"
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    model = make_tiny_llama(tok)
    ids = encode_prompt(tok, EIFFEL.prompt)
    assert ids[0] == bos
    edit(model, [EIFFEL], demonstrations=0)
    prefix = tok(prefix_text([Fact(EIFFEL.prompt, EIFFEL.target)], 0), add_special_tokens=False)["input_ids"]
    assert model.contextualize(ids) == [bos] + prefix + ids[1:]


def test_embeddings_leave_out_the_first_position_and_are_standardised(tiny_llama):
    from kedsl.toolkit.embeddings import embed, reference_stats
    from kedsl.toolkit.embeddings import layer_states as _layer_states

    model = tiny_llama
    ids = encode_prompt(model.tokenizer, EIFFEL.prompt)
    (states,) = _layer_states(model, [ids], 1)
    assert states.shape == (len(ids) - 1, model.hidden_size)
    mean, std = reference_stats(model, 1)
    expected = torch.nn.functional.normalize((states.mean(0) - mean) / std, dim=0)
    torch.testing.assert_close(embed(model, [ids], 1)[0], expected)
    # padding in a batch does not change a row's embedding
    batched = embed(model, [ids, ids[:3]], 1)
    torch.testing.assert_close(batched[0], expected, atol=1e-5, rtol=0)


def test_state_round_trip_and_digest():
    from kedsl_ike.ike import DEMONSTRATIONS, Fact, IKEMemory, Settings

    assert kedsl_ike.N_DEMONSTRATIONS == len(DEMONSTRATIONS)
    mem = IKEMemory([Fact(EIFFEL.prompt, EIFFEL.target, EIFFEL.subject)], Settings(layer=1, threshold=0.5, top_k=2, demonstrations=1))
    tensors, config = mem.state()
    again = IKEMemory.from_state(tensors, config)
    assert tensors == {} and again.facts == mem.facts and again.settings == mem.settings
    assert again.digest() == mem.digest()
    other = IKEMemory([Fact(EIFFEL.prompt, "Berlin", EIFFEL.subject)], mem.settings)
    assert other.digest() != mem.digest()


def test_embeddings_follow_a_later_weight_change(tiny_llama):
    """A weight edit after the memory must not leave stale fact embeddings behind."""
    model = tiny_llama
    outcome, _ = edit(model, [EIFFEL])
    memory = outcome.attachments[0]
    first = memory.fact_embeddings(model, 1).clone()
    assert memory.fact_embeddings(model, 1) is memory.fact_embeddings(model, 1)  # cached
    journal = WeightJournal(model.model)
    journal.add_(model.mlp_out_weight_name(0), torch.randn_like(model.parameter(model.mlp_out_weight_name(0))))
    assert not torch.equal(memory.fact_embeddings(model, 1), first)
    # the edited prompt still finds its fact with the changed weights
    assert fed_text(model, EIFFEL.prompt).startswith("New Fact:")
    journal.rollback()
    assert torch.allclose(memory.fact_embeddings(model, 1), first)


def test_erase_is_refused(tiny_llama):
    from kedsl.errors import UsageError

    with pytest.raises(UsageError, match="cannot erase"):
        edit(tiny_llama, [EditRequest(subject="Eiffel Tower", prompt=EIFFEL.prompt, target="", kind="erase")])
    assert tiny_llama.attachments == []


def _registry():
    import kedsl_architectures
    import kedsl_metrics
    import kedsl_relations
    import kedsl_sources

    return Registry(plugins=[kedsl_ike, kedsl_architectures, kedsl_metrics, kedsl_relations, kedsl_sources], entry_points=False)


def test_saved_memory_loads_back_and_generate_uses_it(tiny_llama, tmp_path):
    from click.testing import CliRunner

    from kedsl.cli import main
    from kedsl.toolkit.generation import generate
    from kedsl.model.loading import load_model
    from kedsl.model.saving import save_model

    model = sharpen(tiny_llama)
    plain_fp = model.fingerprint()
    edit(model, [EIFFEL, DARRIEUX], demonstrations=2)  # a batch: one memory, two facts
    edit(model, [APPLE])
    save_model(model, tmp_path / "m", provenance={})
    loaded = load_model(str(tmp_path / "m"), {}, _registry())
    assert [a.digest() for a in loaded.attachments] == [a.digest() for a in model.attachments]
    assert loaded.fingerprint() == plain_fp
    assert [len(a.facts) for a in loaded.attachments] == [2, 1]
    for prompt in (EIFFEL.prompt, DARRIEUX.prompt, APPLE.prompt, UNRELATED[0]):
        assert fed_text(loaded, prompt) == fed_text(model, prompt)
    assert fed_text(loaded, DARRIEUX.prompt).endswith(f"{DARRIEUX.target}\n{DARRIEUX.prompt}")
    assert fed_text(loaded, UNRELATED[0]) == UNRELATED[0]
    # generation from the loaded directory = the plain model generating after the prefix
    ids = encode_prompt(loaded.tokenizer, EIFFEL.prompt)
    with_memory = greedy_ids(loaded, [ids], 8)[0]
    loaded_plain = load_model(str(tmp_path / "m"), {}, _registry())
    for a in list(loaded_plain.attachments):
        uninstall(loaded_plain, a)
    assert greedy_ids(loaded_plain, [model.contextualize(ids)], 8)[0] == with_memory
    expected = generate(loaded, [EIFFEL.prompt, UNRELATED[0]], max_new_tokens=8)
    assert expected[0] == loaded.tokenizer.decode(with_memory, skip_special_tokens=True)
    # `kedsl generate DIR` (the installed plugin, found by entry point) says the same
    result = CliRunner().invoke(main, ["generate", str(tmp_path / "m"), EIFFEL.prompt, UNRELATED[0], "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.split("\n") if " -> " in line]  # not splitlines: random text may hold \x1e
    assert lines == [f"{p} -> {c}".replace("\n", "\\n") for p, c in zip([EIFFEL.prompt, UNRELATED[0]], expected)]


def test_revert_after_an_api_run_removes_the_memory(tiny_tokenizer, tmp_path):
    from conftest import make_tiny_llama

    from kedsl import api
    from kedsl.api.history import revert
    from kedsl.model.loading import load_model
    from kedsl.provenance.store import Store

    registry = _registry()
    model = sharpen(make_tiny_llama(tiny_tokenizer))
    plain_fp = model.fingerprint()
    script = tmp_path / "a.ke"
    script.write_text(
        'model "tiny";\n'
        f'edit prompt "{EIFFEL.prompt}" subject "{EIFFEL.subject}" -> "{EIFFEL.target}" using ike(layer=1, threshold={EXACT});\n'
        f'edit prompt "{DARRIEUX.prompt}" subject "{DARRIEUX.subject}" -> "{DARRIEUX.target}" using ike(layer=1, threshold={EXACT});\n'
    )
    report = api.apply(str(script), db=tmp_path / "k.db", out=tmp_path / "edited", model=model, registry=registry)
    assert [r.status for r in report.edits] == ["applied", "applied"]
    edited = load_model(str(tmp_path / "edited"), {}, registry)
    assert edited.fingerprint() == plain_fp and len(edited.attachments) == 2
    assert fed_text(edited, EIFFEL.prompt).startswith("New Fact:")

    store = Store.open(tmp_path / "k.db")
    try:
        revert(store, report.edits[0].edit_id, tmp_path / "edited", tmp_path / "reverted", argv=["test"])
    finally:
        store.close()
    reverted = load_model(str(tmp_path / "reverted"), {}, registry)
    assert reverted.fingerprint() == plain_fp
    assert [a.facts[0].target for a in reverted.attachments] == [DARRIEUX.target]
    assert fed_text(reverted, EIFFEL.prompt) == EIFFEL.prompt
    assert fed_text(reverted, DARRIEUX.prompt).endswith(f"{DARRIEUX.target}\n{DARRIEUX.prompt}")


def test_descriptor_module_imports_without_torch():
    import subprocess
    import sys

    code = "import sys; sys.modules['torch'] = None; import kedsl_ike; print(kedsl_ike.register_methods()[0].name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ike"
