"""SERAC on tiny models: training raises the validation score, a prompt out of every edit's
scope is computed bit-identically to the unedited model, a prompt in scope is answered by
the counterfactual model (the edit in its context, the adapter on for its row only), the
memory is saved, loaded and reverted with the model, and the method passes the
conformance kit."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama
from test_device_map import edit_split_and_unsplit

from kedsl.editing.outcome import EditContext
from kedsl.editing.request import EditRequest
from kedsl.errors import ModelError, UsageError
from kedsl.model.handle import uninstall
from kedsl.model.journal import WeightJournal
from kedsl.plugin.testing import check_method
from kedsl.registry import Registry
from kedsl.registry.params import resolve_params
from kedsl.training.loop import LoopSettings, train
from kedsl_serac import counterfactual as C
from kedsl_serac.memory import SERACMemory

FIX = Path(__file__).parent / "fixtures"
DATA = [str(FIX / "zsre_slice_50_59.json"), str(FIX / "real" / "knowedit_zsre_0-2.json"), str(FIX / "real" / "zsre_mend_train_0-2.json")]
HPARAMS = {"lora_rank": 4, "projection": 32, "layer": 1}
EIFFEL = EditRequest(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of", target="Rome")


@pytest.fixture(scope="module")
def trained(tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("serac") / "editor"
    model = make_tiny_llama(tiny_tokenizer)
    settings = LoopSettings(batch_size=2, max_steps=30, val_every=10, val_size=3, lr=3e-3)
    editor = train(model, Registry(), "serac", DATA, out, params=HPARAMS, settings=settings)
    return out, editor


def _edit(model, out, requests=(EIFFEL,), **params):
    spec = Registry().method("serac")
    context = EditContext(weights=WeightJournal(model.model), cache_dir=out, seed=0)
    outcome = spec.load().apply(model, list(requests), resolve_params(spec.params, {"editor": str(out), **params}), context)
    return outcome, context


def _logits(model, ids):
    with torch.no_grad():
        return model.model(input_ids=torch.tensor([ids])).logits


def test_training_raises_the_validation_score(trained):
    out, editor = trained
    curve = editor["curve"]
    assert curve[0]["step"] == 0 and len(curve) == 4
    assert curve[-1]["val_counterfactual_loss"] < curve[0]["val_counterfactual_loss"], curve
    assert max(c["score"] for c in curve) >= curve[0]["score"], curve
    assert editor["trainer"]["layer"] == 1 and editor["trainer"]["lora_layers"] == list(range(4))
    assert (out / "editor.safetensors").is_file() and (out / "curve.png").is_file()


def test_the_counterfactual_context_carries_the_edit_and_the_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt_ids = list(tok("Where is the Eiffel Tower?", add_special_tokens=True)["input_ids"])
    ids = C.context_ids(tok, EIFFEL.prompt, EIFFEL.target, prompt_ids)
    text = tok.decode(ids)
    assert C.MARKER in text and "Rome" in text and text.rstrip().endswith("Where is the Eiffel Tower?")
    marker = C.marker_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    plain = [pad] * (len(ids) + 2 - len(prompt_ids)) + prompt_ids  # left-padded like the first row
    batch = torch.tensor([[pad, pad, *ids], plain])
    assert C.marked_rows(batch, marker, pad, []).tolist() == [True, False]


def test_out_of_scope_prompts_are_computed_bit_identically(trained, tiny_tokenizer):
    out, _ = trained
    model = make_tiny_llama(tiny_tokenizer)
    prompt = list(tiny_tokenizer("Photosynthesis converts light into", add_special_tokens=True)["input_ids"])
    before = _logits(model, prompt)
    _, context = _edit(model, out, margin=10.0)  # the highest margin: nothing is in scope
    (memory,) = [a for a in model.attachments if isinstance(a, SERACMemory)]
    assert model.contextualize(prompt) == prompt
    assert torch.equal(_logits(model, prompt), before)


def test_in_scope_prompts_get_the_edit_in_context_and_the_adapter(trained, tiny_tokenizer):
    out, _ = trained
    model = make_tiny_llama(tiny_tokenizer)
    prompt = list(tiny_tokenizer(EIFFEL.prompt, add_special_tokens=True)["input_ids"])
    outcome, _ = _edit(model, out, margin=-10.0)  # the lowest margin: every prompt is in scope
    assert outcome.changes == {} and outcome.info["facts"] == 1
    fed = model.contextualize(prompt)
    assert fed == C.context_ids(tiny_tokenizer, EIFFEL.prompt, EIFFEL.target, prompt)
    with_adapter = _logits(model, fed)
    (memory,) = [a for a in model.attachments if isinstance(a, SERACMemory)]
    uninstall(model, memory)
    assert model.contextualize(prompt) == prompt
    without = _logits(model, fed)  # the same context, the adapter gone
    assert not torch.equal(with_adapter, without)


def test_the_adapter_is_on_only_for_marked_rows_of_a_batch(trained, tiny_tokenizer):
    out, _ = trained
    model = make_tiny_llama(tiny_tokenizer)
    plain = list(tiny_tokenizer("The weather was cold and windy", add_special_tokens=True)["input_ids"])
    marked = C.context_ids(tiny_tokenizer, EIFFEL.prompt, EIFFEL.target, plain)
    plain_padded = plain + [plain[-1]] * (len(marked) - len(plain))
    base = model.model(input_ids=torch.tensor([plain_padded, marked])).logits.detach()
    _edit(model, out)
    both = model.model(input_ids=torch.tensor([plain_padded, marked])).logits.detach()
    assert torch.equal(both[0], base[0])
    assert not torch.equal(both[1], base[1])


def test_sequential_memories_pool_their_facts_and_revert_one_by_one(trained, tiny_tokenizer):
    out, _ = trained
    model = make_tiny_llama(tiny_tokenizer)
    louvre = EditRequest(subject="Louvre", prompt="The Louvre is located in the city of", target="Berlin")
    _edit(model, out, margin=-10.0)
    outcome, _ = _edit(model, out, requests=(louvre,), margin=-10.0)
    assert outcome.info["pool_facts"] == 2
    first, second = [a for a in model.attachments if isinstance(a, SERACMemory)]
    prompt = list(tiny_tokenizer(louvre.prompt, add_special_tokens=True)["input_ids"])
    assert "Berlin" in tiny_tokenizer.decode(model.contextualize(prompt))
    uninstall(model, first)  # the leader goes; the second memory takes the adapter over
    assert second._adapter is not None
    assert "Berlin" in tiny_tokenizer.decode(model.contextualize(prompt))
    uninstall(model, second)
    assert model.contextualize(prompt) == prompt and not model.attachments


def test_a_memory_survives_its_state_round_trip(trained, tiny_tokenizer):
    out, _ = trained
    model = make_tiny_llama(tiny_tokenizer)
    _edit(model, out)
    (memory,) = model.attachments
    tensors, config = memory.state()
    again = SERACMemory.from_state(tensors, config)
    assert again.facts == memory.facts and again.settings == memory.settings
    assert all(torch.equal(again.tensors[k], memory.tensors[k]) for k in memory.tensors)


def test_serac_without_an_editor_is_a_usage_error(tiny_llama, tmp_path):
    spec = Registry().method("serac")
    with pytest.raises(UsageError, match="needs a trained editor"):
        spec.load().apply(tiny_llama, [EIFFEL], resolve_params(spec.params, {}), EditContext(weights=WeightJournal(tiny_llama.model), cache_dir=tmp_path))


def test_the_editor_is_refused_on_another_base_model(trained, tiny_tokenizer):
    out, _ = trained
    other = make_tiny_llama(tiny_tokenizer, seed=1)
    with pytest.raises(ModelError, match="trained for another model"):
        _edit(other, out)


def test_serac_conforms(trained, tmp_path):
    out, _ = trained
    check_method("serac", params={"editor": str(out)}, workdir=tmp_path).assert_ok()


def test_check_finds_a_missing_or_foreign_editor_before_any_model_loads(trained, tmp_path):
    from kedsl.lang import check_source

    out, _ = trained
    prompt = f'edit prompt "{EIFFEL.prompt}" subject "Eiffel Tower" -> "Rome"'
    cases = {
        f"{prompt} using serac;": "needs a trained editor",
        f'{prompt} using serac(editor="{tmp_path / "nowhere"}");': "no trained editor",
        f'{prompt} using mend(editor="{out}");': "holds a serac editor, not a mend one",
    }
    for line, message in cases.items():
        _, diags = check_source(f'model "tiny";\n{line}\n', Registry())
        (d,) = [d for d in diags if d.is_error]
        assert d.code == "bad-editor" and message in d.message, (line, d)
    _, diags = check_source(f'model "tiny";\n{prompt} using serac(editor="{out}");\n', Registry())
    assert not [d for d in diags if d.is_error]


def test_serac_edits_a_split_model_like_the_unsplit_one(trained, tiny_tokenizer, tmp_path, monkeypatch):
    from kedsl.model.saving import save_model

    out, _ = trained
    save_model(make_tiny_llama(tiny_tokenizer), tmp_path / "model", {})  # the model the editor was trained on
    edit_split_and_unsplit("serac", {"editor": str(out)}, tmp_path / "model", tmp_path, monkeypatch)
