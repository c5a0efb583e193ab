"""LoRA and AdaLoRA (plugins/kedsl_lora) on tiny in-process models: the adapter is really
trained and really removed, stacks with others, saves as a peft adapter or merged into the
weights, loads back, and reverts through the audit trail."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama, method_params, sharpen

import kedsl_lora
from kedsl.model.attachments import uninstall
from kedsl.editing.outcome import EditContext
from kedsl.editing.request import EditRequest
from kedsl.model.journal import WeightJournal
from kedsl.toolkit.scoring import teacher_forced

FRENCH = EditRequest(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux", target="French")
ROME = EditRequest(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of", target="Rome")
PROBE = "The Louvre is located in the city of"
FAST = {"layers": [1, 2], "lr": 1e-2, "steps": 40}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU two spinning
    threads made this file 4x slower; restored afterwards for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(model, method="lora", requests=(FRENCH,), seed=0, **over):
    from kedsl_lora.lora import AdaLoRA, LoRA

    params = method_params(kedsl_lora, method, FAST, **over)
    ctx = EditContext(weights=WeightJournal(model.model), cache_dir=Path("/tmp"), seed=seed)
    return {"lora": LoRA, "adalora": AdaLoRA}[method]().apply(model, list(requests), params, ctx)


def lands(model, request) -> bool:
    score = teacher_forced(model, [(request.prompt, request.target)])[0]
    return score.predicted == score.target_ids


def logits(model, text=PROBE):
    ids = torch.tensor([model.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model.model(input_ids=ids).logits.clone()


def plain_state(model):
    """What must come back exactly: module objects, parameter names, flags, attributes."""
    net = model.model
    return {
        "modules": {n: id(m) for n, m in net.named_modules()},
        "keys": list(net.state_dict()),
        "grad_flags": [p.requires_grad for p in net.parameters()],
        "attrs": sorted(net.__dict__),
        "fingerprint": model.fingerprint(),
        "logits": logits(model),
    }


def assert_plain(model, before):
    after = plain_state(model)
    assert torch.equal(after.pop("logits"), before["logits"])
    assert after == {k: v for k, v in before.items() if k != "logits"}
    assert not model.attachments


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_adapter_is_trained_installed_and_removed_exactly(method, tiny_llama):
    model = sharpen(tiny_llama)
    assert not lands(model, FRENCH)
    before = plain_state(model)
    outcome = run(model, method)
    assert lands(model, FRENCH)
    assert not outcome.changes  # no weight changed: the adapter is the outcome
    (adapter,) = outcome.attachments
    assert adapter.kind == f"{method}_adapter" and model.attachments == [adapter]
    assert adapter.targets == [model.arch.mlp_out.format(1), model.arch.mlp_out.format(2)]
    # trained: LoRA's B starts at zero and AdaLoRA's singular values E too
    trained = "lora_B" if method == "lora" else "lora_E"
    moved = {k: float(v.abs().max()) for k, v in adapter.tensors.items() if f".{trained}" in k}
    assert len(moved) == 2 and all(v > 0 for v in moved.values())
    # installed on top of untouched weights: the weights' fingerprint does not move
    assert model.fingerprint() == before["fingerprint"]
    assert any("lora_A" in k for k in model.model.state_dict())
    assert not torch.equal(logits(model), before["logits"])
    outcome.undo(model)
    assert_plain(model, before)
    outcome.redo(model)  # reinstalling from the captured content gives the edit back
    assert lands(model, FRENCH)


def test_adalora_allocates_rank_and_its_objective_is_ft_m(tiny_llama):
    from kedsl.toolkit.objectives import masked_target_loss
    from kedsl_lora.lora import _target_labels

    model = sharpen(tiny_llama)
    # the model's own loss on these labels is FT-M's masked target loss (a padded batch)
    ids, mask, labels = _target_labels(model, [FRENCH, ROME])
    with torch.no_grad():
        hf = model.model(input_ids=ids, attention_mask=mask, labels=labels).loss
        torch.testing.assert_close(hf, masked_target_loss(model, [FRENCH, ROME]))
    outcome = run(model, "adalora", init_rank=6, target_rank=2, steps=12, tfinal=2, nll_tol=0.0)
    (adapter,) = outcome.attachments
    pattern = adapter.config["rank_pattern"]
    assert sorted(pattern) == [f"{model.arch.mlp_out.format(i)}.lora_E" for i in (1, 2)]
    kept = {k: sum(v) for k, v in pattern.items()}
    assert sum(kept.values()) == 2 * 2  # the final budget: target_rank per module on average
    for key, rank in kept.items():  # the saved tensors are cut down to the allocated ranks
        assert adapter.tensors[f"base_model.model.{key}"].shape[0] == rank
    assert outcome.info["steps"] == 12


def test_sequential_adapters_stack_and_removing_one_keeps_the_other(tiny_llama):
    model = sharpen(tiny_llama)
    before = plain_state(model)
    first = run(model, requests=(FRENCH,))
    second = run(model, requests=(ROME,))
    assert lands(model, FRENCH) and lands(model, ROME)
    assert model.fingerprint() == before["fingerprint"]
    uninstall(model, first.attachments[0])  # detaches the later one, removes, re-attaches
    assert lands(model, ROME)
    only_second = logits(model)
    # what is left computes exactly what the second adapter alone does on a fresh model
    fresh = sharpen(make_tiny_llama(model.tokenizer))
    clone = type(second.attachments[0]).from_state(*second.attachments[0].state())
    clone.attach(fresh)
    assert torch.equal(logits(fresh), only_second)
    second.undo(model)
    assert_plain(model, before)


def test_lora_and_adalora_share_a_model_on_separate_modules(tiny_llama):
    from kedsl.errors import UsageError

    model = sharpen(tiny_llama)
    before = plain_state(model)
    lora = run(model, "lora", requests=(FRENCH,), layers=[1])
    adalora = run(model, "adalora", requests=(ROME,), layers=[2])
    assert lands(model, FRENCH) and lands(model, ROME)
    with pytest.raises(UsageError, match="another kind"):
        run(model, "adalora", requests=(ROME,), layers=[1])
    assert len(model.attachments) == 2
    lora.undo(model)
    assert lands(model, ROME)
    adalora.undo(model)
    assert_plain(model, before)


def test_merged_deltas_are_the_adapter_folded_into_the_weights(tiny_gpt2):
    """GPT-2's Conv1D stores (in, out): the delta must come out in that orientation."""
    model = sharpen(tiny_gpt2)
    outcome = run(model, layers=[1], steps=60)
    assert lands(model, FRENCH)
    adapted = logits(model)
    deltas = outcome.attachments[0].merged_deltas(model)
    name = model.mlp_out_weight_name(1)
    assert list(deltas) == [name] and deltas[name].shape == model.parameter(name).shape
    outcome.undo(model)
    journal = WeightJournal(model.model)
    journal.add_(name, deltas[name])
    torch.testing.assert_close(logits(model), adapted, atol=1e-4, rtol=1e-4)
    assert lands(model, FRENCH)
    journal.rollback()


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_adapter_save_loads_back_with_kedsl_and_with_peft(method, tiny_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kedsl.model.loading import load_model
    from kedsl.model.saving import save_model

    model = sharpen(tiny_llama)
    fp = model.fingerprint()
    outcome = run(model, method)
    edited = logits(model)
    out = save_model(model, tmp_path / "saved", provenance={})
    record = json.loads((out / "kedsl.json").read_text())
    assert record["save_mode"] == "adapter" and record["fingerprint"] == fp
    folder = out / "attachments" / f"00-{method}_adapter"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert record["attachments"][0]["digest"] == outcome.attachments[0].digest()

    reloaded = load_model(str(out), {})
    assert [a.digest() for a in reloaded.attachments] == [outcome.attachments[0].digest()]
    assert torch.equal(logits(reloaded), edited) and lands(reloaded, FRENCH)
    assert reloaded.fingerprint() == fp

    plain = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([model.tokenizer(PROBE)["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(plain(input_ids=ids).logits, edited, atol=1e-3)  # the weights alone are unedited
        peft_model = PeftModel.from_pretrained(plain, str(folder)).eval()
        torch.testing.assert_close(peft_model(input_ids=ids).logits, edited, atol=1e-5, rtol=1e-5)


def test_merged_save_loads_with_plain_transformers(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    from kedsl.model.loading import load_model
    from kedsl.model.saving import save_model, saved_fingerprint

    model = sharpen(tiny_llama)
    fp = model.fingerprint()
    outcome = run(model, "adalora")
    edited = logits(model)
    expected_fp = saved_fingerprint(model, "merged")
    out = save_model(model, tmp_path / "merged", provenance={}, mode="merged")
    record = json.loads((out / "kedsl.json").read_text())
    assert record["fingerprint"] == expected_fp != fp
    assert "attachments" not in record and not (out / "attachments").exists()
    assert record["merged_attachments"][0]["digest"] == outcome.attachments[0].digest()
    assert model.fingerprint() == fp  # saving merged left the live model as it was

    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([model.tokenizer(PROBE)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, edited, atol=1e-4, rtol=1e-4)
    reloaded = load_model(str(out), {})
    assert not reloaded.attachments and lands(reloaded, FRENCH) and reloaded.fingerprint() == expected_fp


def _registry():
    import kedsl_architectures
    import kedsl_metrics
    import kedsl_relations
    import kedsl_sources
    from kedsl.registry import Registry

    return Registry(plugins=[kedsl_lora, kedsl_architectures, kedsl_metrics, kedsl_relations, kedsl_sources], entry_points=False)


@pytest.mark.parametrize("mode", ["adapter", "merged"])
def test_script_saves_and_revert_restores_the_base(mode, tiny_tokenizer, tmp_path):
    from kedsl import api
    from kedsl.model.loading import load_model
    from kedsl.provenance.store import Store

    base = make_tiny_llama(tiny_tokenizer)
    sharpen(base).model.save_pretrained(tmp_path / "base")
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    registry = _registry()
    base = load_model(str(tmp_path / "base"), {}, registry)
    fp_base, logits_base = base.fingerprint(), logits(base)
    script = tmp_path / "edit.ke"
    script.write_text(
        f'model "{tmp_path / "base"}";\n'
        f'edit prompt "{FRENCH.prompt}" subject "{FRENCH.subject}" -> "{FRENCH.target}" '
        f"using lora(layers=1..2, lr=0.01, steps=40) expect efficacy;\n"
        f'save to "{tmp_path / "edited"}" {mode};\n'
    )
    report = api.apply(str(script), db=tmp_path / "k.db", registry=registry)
    assert [r.status for r in report.edits] == ["applied"]
    edited = load_model(str(tmp_path / "edited"), {}, registry)
    assert lands(edited, FRENCH)
    assert len(edited.attachments) == (1 if mode == "adapter" else 0)
    assert (edited.fingerprint() == fp_base) == (mode == "adapter")

    with Store.open(tmp_path / "k.db") as store:
        result = api.revert(store, report.edits[0].edit_id, tmp_path / "edited", tmp_path / "reverted")
    assert result["modes"]["attachment:0:lora_adapter"] == ("removed" if mode == "adapter" else "unmerged (subtracted)")
    reverted = load_model(str(tmp_path / "reverted"), {}, registry)
    assert not reverted.attachments
    if mode == "adapter":  # removing an attachment is exact
        assert reverted.fingerprint() == fp_base
        assert torch.equal(logits(reverted), logits_base)
    else:  # subtracting a merged delta is exact only up to rounding
        torch.testing.assert_close(logits(reverted), logits_base, atol=1e-4, rtol=1e-4)


def test_failed_expectation_leaves_no_adapter(tiny_llama, tmp_path):
    import kedsl_metrics
    from kedsl.executor import Executor, PlannedEdit
    from kedsl.lang import ast
    from kedsl.registry import Registry

    model = sharpen(tiny_llama)
    before = plain_state(model)
    registry = Registry(plugins=[kedsl_lora, kedsl_metrics], entry_points=False)
    ex = Executor(model, registry, cache_dir=tmp_path, says_now_tokens=0)
    impossible = ast.Expect("efficacy", op=">", threshold=1.0)
    (r,) = ex.run([PlannedEdit(FRENCH, "lora", dict(FAST), [impossible])])
    assert r.status == "rolled_back" and not r.passed
    assert_plain(model, before)


def test_bad_targets_are_usage_errors(tiny_llama):
    from kedsl.errors import UsageError

    with pytest.raises(UsageError, match="layer 9 does not exist"):
        run(tiny_llama, layers=[9])
    with pytest.raises(UsageError, match="unknown module role"):
        run(tiny_llama, modules=["mlp_up"])
    with pytest.raises(UsageError, match="no rank-allocation steps"):
        run(tiny_llama, "adalora", steps=4, tinit=2, tfinal=2)
    assert not tiny_llama.attachments


def test_roles_choose_modules_from_the_architecture(tiny_llama):
    from kedsl_lora.lora import target_modules

    model = tiny_llama
    assert target_modules(model, [3], ["mlp_out"]) == ["model.layers.3.mlp.down_proj"]
    assert target_modules(model, None, ["mlp_out"]) == [f"model.layers.{i}.mlp.down_proj" for i in range(4)]
    assert target_modules(model, [0], ["mlp", "attn"]) == [
        f"model.layers.0.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")
    ] + [f"model.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    outcome = run(model, layers=[0], modules=["attn"], steps=2)  # installed layers still count as their base module
    assert target_modules(model, [0], ["attn"]) == [f"model.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    outcome.undo(model)


def test_descriptor_module_imports_without_torch():
    import subprocess
    import sys

    code = "import sys; sys.modules['torch'] = None; import kedsl_lora; print([m.name for m in kedsl_lora.register_methods()])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['lora', 'adalora']"
