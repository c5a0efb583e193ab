"""The attachment path of the core (kedsl/attachments.py) with a toy method whose outcome is
a forward hook, not a weight change: install/uninstall are exact, a failed edit leaves no
trace, saving writes it beside the weights (or folds it in with `merged`), loading a saved
directory installs it again (and refuses changed files), the store keeps its content, and
`revert` removes exactly it - also from a merged save, by subtracting its delta."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_llama, sharpen

import kedsl_architectures
import kedsl_metrics
import kedsl_relations
import kedsl_sources
from kedsl.model.attachments import Attachment, attachments_digest, install, uninstall
from kedsl.editing.outcome import EditContext
from kedsl.model.journal import WeightJournal
from kedsl.errors import ModelError
from kedsl.plugin import hookimpl
from kedsl.registry.params import Param
from kedsl.registry import Registry
from kedsl.registry.specs import MethodSpec

LAYER = 1


class Shift(Attachment):
    """Adds ``x @ D.T`` to the output of one MLP output projection (a LoRA-like delta that
    can be merged: W + D computes the same)."""

    kind = "toy_shift"
    method = "toy"

    def __init__(self, layer: int, delta: torch.Tensor):
        self.layer, self.delta, self._handle = layer, delta, None

    def attach(self, model):
        assert self._handle is None
        self._handle = model.mlp_out(self.layer).register_forward_hook(
            lambda mod, args, out: out + torch.nn.functional.linear(args[0], self.delta.to(out.dtype))
        )

    def detach(self, model):
        self._handle.remove()
        self._handle = None

    def state(self):
        return {"delta": self.delta}, {"layer": self.layer}

    @classmethod
    def from_state(cls, tensors, config):
        return cls(config["layer"], tensors["delta"])

    def merged_deltas(self, model):
        return {model.mlp_out_weight_name(self.layer): self.delta}


class ToyMethod:
    def apply(self, model, requests, params, context):
        g = torch.Generator().manual_seed(params["seed"])
        w = model.mlp_out(LAYER).weight
        context.attach(model, Shift(LAYER, 0.5 * torch.randn(w.shape, generator=g)))
        return context.outcome()


class ToyPlugin:
    @hookimpl
    def register_methods(self):
        return [
            MethodSpec(
                name="toy",
                implementation="test_attachments:ToyMethod",
                params=(Param("seed", "int", 0, "which random delta"),),
                attachments=(("toy_shift", "test_attachments:Shift"),),
            )
        ]


@pytest.fixture
def registry(monkeypatch):
    import kedsl.registry.loader

    reg = Registry(plugins=[ToyPlugin(), kedsl_architectures, kedsl_metrics, kedsl_relations, kedsl_sources], entry_points=False)
    monkeypatch.setattr(kedsl.registry.loader, "_default", reg)  # revert() loads through the global one
    return reg


def logits(model, text="The city of Paris is"):
    ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model.model(input_ids=ids).logits


def test_install_uninstall_is_exact_and_the_fingerprint_is_the_weights(tiny_tokenizer):
    model = sharpen(make_tiny_llama(tiny_tokenizer))
    before, fp = logits(model), model.fingerprint()
    a = Shift(LAYER, 0.5 * torch.randn_like(model.mlp_out(LAYER).weight))
    b = Shift(0, 0.5 * torch.randn_like(model.mlp_out(0).weight))
    install(model, a)
    install(model, b)
    assert not torch.equal(logits(model), before)
    assert model.fingerprint() == fp  # weights untouched
    assert attachments_digest(model) is not None
    with pytest.raises(RuntimeError):
        install(model, a)  # twice is an internal error, not a silent double hook
    uninstall(model, a)  # the earlier one, while b stays
    assert model.attachments == [b]
    uninstall(model, b)
    assert torch.equal(logits(model), before)
    assert attachments_digest(model) is None
    assert not model.mlp_out(LAYER)._forward_hooks and not model.mlp_out(0)._forward_hooks


def test_context_rollback_and_outcome_undo_redo(tiny_tokenizer):
    model = sharpen(make_tiny_llama(tiny_tokenizer))
    before = logits(model)
    ctx = EditContext(weights=WeightJournal(model.model), cache_dir=None)
    outcome = ToyMethod().apply(model, [], {"seed": 1}, ctx)
    edited = logits(model)
    assert not torch.equal(edited, before)
    outcome.undo(model)
    assert torch.equal(logits(model), before) and not model.attachments
    outcome.redo(model)
    assert torch.equal(logits(model), edited)
    ctx.rollback(model)
    assert torch.equal(logits(model), before) and not model.attachments


def _script(tmp_path, name, seed, save="", expect=""):
    p = tmp_path / name
    p.write_text(
        f'model "tiny";\nrelation near "The city of {{}}";\n'
        f'edit "Paris" near -> "Rome" using toy(seed={seed});\n{expect}{save}'
    )
    return p


def test_save_load_store_and_revert(tiny_tokenizer, tmp_path, registry):
    from kedsl import api
    from kedsl.provenance import verify
    from kedsl.model.loading import load_model
    from kedsl.provenance.store import Store

    model = sharpen(make_tiny_llama(tiny_tokenizer))
    fp0, plain = model.fingerprint(), logits(model)
    db = tmp_path / "k.db"
    r1 = api.apply(str(_script(tmp_path, "a.ke", 1)), db=db, out=tmp_path / "one", model=model, registry=registry)
    after_one = logits(model)
    r2 = api.apply(str(_script(tmp_path, "b.ke", 2)), db=db, out=tmp_path / "two", model=model, registry=registry)
    after_two = logits(model)
    assert [r.status for r in r1.edits + r2.edits] == ["applied", "applied"]
    assert r2.fingerprint_after == fp0  # attachments are not weights

    record = json.loads((tmp_path / "two" / "kedsl.json").read_text())
    assert [e["kind"] for e in record["attachments"]] == ["toy_shift", "toy_shift"]
    assert (tmp_path / "two" / record["attachments"][1]["path"] / "tensors.safetensors").is_file()
    reloaded = load_model(str(tmp_path / "two"), {}, registry)
    assert torch.allclose(logits(reloaded), after_two, atol=1e-5)

    # the store keeps each attachment's content; verify checks those blobs too
    store = Store.open(db)
    edit = store.edit(r1.edits[0].edit_id)
    rec = json.loads(edit["attachments"])[0]
    tensors, config, kind, method = store.load_attachment(rec["blob"])
    assert (kind, method, config) == ("toy_shift", "toy", {"layer": LAYER})
    assert verify.verify_log(store).ok

    # revert the first edit: the second stays, the first's hook is gone
    out = api.revert(store, r1.edits[0].edit_id, tmp_path / "two", tmp_path / "rev", argv=["test"])
    assert out["modes"] == {"attachment:0:toy_shift": "removed"}
    rev = load_model(str(tmp_path / "rev"), {}, registry)
    assert len(rev.attachments) == 1 and rev.fingerprint() == fp0
    only_two = sharpen(make_tiny_llama(tiny_tokenizer))
    install(only_two, Shift.from_state(*rev.attachments[0].state()))
    assert torch.allclose(logits(rev), logits(only_two), atol=1e-5)
    # reverting it again is refused: the model no longer holds it
    from kedsl.errors import UsageError

    with pytest.raises(UsageError, match="does not hold"):
        api.revert(store, r1.edits[0].edit_id, tmp_path / "rev", tmp_path / "rev2", force=True, argv=["test"])
    store.close()
    assert not torch.equal(after_one, plain)


def test_merged_save_folds_the_delta_in_and_revert_subtracts_it(tiny_tokenizer, tmp_path, registry):
    from transformers import AutoModelForCausalLM

    from kedsl import api

    from kedsl.provenance import verify
    from kedsl.provenance.store import Store

    model = sharpen(make_tiny_llama(tiny_tokenizer))
    fp0, plain = model.fingerprint(), logits(model)
    db = tmp_path / "k.db"
    script = _script(tmp_path, "m.ke", 3, save=f'save to "{tmp_path / "merged"}" merged;\n')
    report = api.apply(str(script), db=db, model=model, registry=registry)
    edited = logits(model)
    record = json.loads((tmp_path / "merged" / "kedsl.json").read_text())
    assert record["save_mode"] == "merged" and "attachments" not in record
    assert report.fingerprint_after == record["fingerprint"] != fp0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        ids = model.tokenizer("The city of Paris is", return_tensors="pt")["input_ids"]
        assert torch.allclose(hf(input_ids=ids).logits, edited, atol=1e-4)
    assert verify.verify_model(Store.open(db), tmp_path / "merged").ok

    store = Store.open(db)
    out = api.revert(store, report.edits[0].edit_id, tmp_path / "merged", tmp_path / "unmerged", argv=["test"])
    assert out["modes"] == {"attachment:0:toy_shift": "unmerged (subtracted)"}
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "unmerged")
    with torch.no_grad():
        assert torch.allclose(back(input_ids=ids).logits, plain, atol=1e-4)
    store.close()


def test_a_changed_attachment_file_is_refused_on_load(tiny_tokenizer, tmp_path, registry):
    from safetensors.torch import load_file, save_file

    from kedsl import api
    from kedsl.model.loading import load_model

    model = sharpen(make_tiny_llama(tiny_tokenizer))
    api.apply(str(_script(tmp_path, "a.ke", 1)), db=tmp_path / "k.db", out=tmp_path / "one", model=model, registry=registry)
    path = tmp_path / "one" / "attachments" / "00-toy_shift" / "tensors.safetensors"
    t = load_file(str(path))
    t["delta"][0, 0] += 1
    save_file(t, str(path))
    with pytest.raises(ModelError, match="digest"):
        load_model(str(tmp_path / "one"), {}, registry)
    from kedsl.provenance.verify import verify_model
    from kedsl.provenance.store import Store

    check = verify_model(Store.open(tmp_path / "k.db"), tmp_path / "one")
    # verify names the changed file (the log recorded every file's SHA-256 at save)
    assert not check.ok and any("attachments/00-toy_shift/tensors.safetensors was changed" in f.message for f in check.findings)
    # a registry without the method cannot install it: a clear error, not a silent skip
    bare = Registry(plugins=[kedsl_architectures, kedsl_metrics, kedsl_relations, kedsl_sources], entry_points=False)
    with pytest.raises(ModelError, match="not installed"):
        load_model(str(tmp_path / "one"), {}, bare)
