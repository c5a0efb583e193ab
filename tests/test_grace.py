"""GRACE (plugins/kedsl_grace) on tiny in-process LLaMA and GPT-2 models: an edit makes its
target the argmax while every other input passes through bit-identically, undo/revert
remove the codebook (and its hooks) exactly, sequential edits share one codebook, a match
replaces exactly the target's positions (and KV-cached decoding agrees with uncached
decoding), and the codebook survives save/reload and the `apply` -> `revert` round trip."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama, method_params, sharpen

import kedsl_architectures
import kedsl_grace
import kedsl_metrics
import kedsl_relations
import kedsl_sources
from kedsl.editing.outcome import EditContext
from kedsl.editing.request import EditRequest
from kedsl.model.journal import WeightJournal
from kedsl.errors import ModelError, UsageError
from kedsl.registry import Registry
from kedsl.toolkit.scoring import greedy_ids, teacher_forced
from kedsl.toolkit.activations import make_batch
from kedsl.toolkit.tokens import encode_pair

LAYER = 1
FAST = {"layer": LAYER, "eps": 0.2, "lr": 0.5, "steps": 60, "nll_tol": 1e-2}
EDIT = EditRequest(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux", target="French")
SECOND = EditRequest(subject="Toyota", prompt="Toyota has its headquarters in", target="Paris")
UNRELATED = [
    "The Eiffel Tower is located in the city of",
    "The mother tongue of Catherine Deneuve is",
    "Apple was founded by Steve Jobs",
    "Berlin",
]


def params(**over):
    return method_params(kedsl_grace, "grace", FAST, **over)


def run(model, requests=(EDIT,), **over):
    from kedsl_grace.grace import Grace

    ctx = EditContext(weights=WeightJournal(model.model), cache_dir=Path("/tmp"), seed=0)
    return Grace().apply(model, list(requests), params(**over), ctx)


@torch.no_grad()
def logits(model, texts):
    """Logits of ``texts`` as one left-padded batch (padding positions included), the way
    scoring feeds the model."""
    batch = make_batch([model.tokenizer(t)["input_ids"] for t in texts], model.tokenizer.pad_token_id, model.device)
    return model.model(**batch.inputs(), use_cache=False).logits


def edited(model, request):
    s = teacher_forced(model, [(request.prompt, request.target)])[0]
    return s.predicted == s.target_ids


def grace_hooks(model):
    top = model.model
    return len(model.mlp_out(LAYER)._forward_hooks) + len(top._forward_pre_hooks) + len(top._forward_hooks)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_edit_makes_the_target_the_argmax_and_everything_else_passes_through_bit_identically(fixture, request):
    model = sharpen(request.getfixturevalue(fixture))
    fp = model.fingerprint()
    alone = [logits(model, [t]) for t in UNRELATED]
    mixed = logits(model, UNRELATED + [EDIT.prompt])  # edit prompt and unrelated rows in one padded batch
    assert not edited(model, EDIT)

    outcome = run(model)
    assert edited(model, EDIT)
    for text, before in zip(UNRELATED, alone):
        assert torch.equal(logits(model, [text]), before), text
    now = logits(model, UNRELATED + [EDIT.prompt])
    assert torch.equal(now[: len(UNRELATED)], mixed[: len(UNRELATED)])  # padding never matches
    assert not torch.equal(now[-1], mixed[-1])
    # the weights are untouched and the outcome is one codebook attachment
    assert model.fingerprint() == fp and outcome.changes == {}
    (att,) = outcome.attachments
    assert att.kind == "grace_codebook" and model.attachments == [att]
    tensors, config = att.state()
    d_in = model.mlp_out(LAYER).weight.shape[0 if model.arch.transposed else 1]
    assert tensors["keys"].shape == (1, d_in) and tensors["spans"].tolist() == [len(encode_pair(model.tokenizer, EDIT.prompt, EDIT.target).target_ids)]
    assert config["layer"] == LAYER and config["eps"] == FAST["eps"]
    assert torch.allclose(tensors["radii"], FAST["eps"] * tensors["keys"].norm(dim=1))
    assert all(p.requires_grad for p in model.model.parameters())  # flags restored


def test_undo_restores_exact_logits_and_fingerprint_and_removes_the_hooks(tiny_llama):
    model = sharpen(tiny_llama)
    texts = UNRELATED + [EDIT.prompt]
    before, fp = logits(model, texts), model.fingerprint()
    outcome = run(model)
    after = logits(model, texts)
    assert not torch.equal(after, before) and grace_hooks(model) == 3
    outcome.undo(model)
    assert torch.equal(logits(model, texts), before)
    assert model.fingerprint() == fp and model.attachments == []
    assert grace_hooks(model) == 0
    outcome.redo(model)
    assert torch.equal(logits(model, texts), after)


def test_sequential_edits_share_the_codebook_and_removing_the_first_keeps_the_second(tiny_llama):
    from kedsl_grace.codebook import codebook_of

    model = sharpen(tiny_llama)
    plain = {t: logits(model, [t]) for t in UNRELATED + [EDIT.prompt, SECOND.prompt]}
    first = run(model, [EDIT])
    second = run(model, [SECOND])
    assert edited(model, EDIT) and edited(model, SECOND)
    book = codebook_of(model.mlp_out(LAYER))
    assert len(book) == 2 and grace_hooks(model) == 3  # one shared codebook, one set of hooks
    first.undo(model)
    assert edited(model, SECOND) and not edited(model, EDIT)
    assert torch.equal(logits(model, [EDIT.prompt]), plain[EDIT.prompt])  # exactly as never edited
    for t in UNRELATED:
        assert torch.equal(logits(model, [t]), plain[t])
    second.undo(model)
    assert len(book) == 0 and grace_hooks(model) == 0


def test_reediting_a_prompt_takes_the_newest_value_and_undo_brings_the_old_one_back(tiny_llama):
    model = sharpen(tiny_llama)
    run(model, [EDIT])
    again = EditRequest(subject=EDIT.subject, prompt=EDIT.prompt, target="Paris")
    newer = run(model, [again])
    assert edited(model, again) and not edited(model, EDIT)
    newer.undo(model)
    assert edited(model, EDIT)


def test_many_entries_are_one_lookup_and_the_nearest_key_decides(tiny_llama):
    from kedsl_grace.codebook import GraceCodebook, codebook_of
    from kedsl_grace.grace import read_keys_and_outputs

    model = sharpen(tiny_llama)
    texts = UNRELATED + [EDIT.prompt]
    plain = logits(model, texts)
    enc = encode_pair(model.tokenizer, EDIT.prompt, EDIT.target)
    (key,), _ = read_keys_and_outputs(model, LAYER, [enc.input_ids[: enc.prompt_len]])
    g = torch.Generator().manual_seed(0)
    n, d_out = 3000, model.mlp_out(LAYER).weight.shape[0]
    # far-away keys (norm ~100x the real key's) with huge radii that still miss every input
    far = key.norm() * 100 * torch.nn.functional.normalize(torch.randn(n, key.shape[0], generator=g), dim=1)
    crowd = GraceCodebook(LAYER, far, torch.randn(n, d_out, generator=g), torch.full((n,), 50.0 * float(key.norm())), torch.ones(n, dtype=torch.long), 0.2)
    # a decoy whose ball holds the edit prompt's key, but whose key is farther than the edit's own
    decoy = GraceCodebook(LAYER, key[None] * 1.02, 100 * torch.randn(1, d_out, generator=g), 0.05 * key.norm()[None], torch.tensor([1]), 0.2)
    from kedsl.model.attachments import install

    install(model, crowd)
    assert torch.equal(logits(model, texts), plain)
    install(model, decoy)
    assert not torch.equal(logits(model, [EDIT.prompt]), plain[-1:])  # the decoy's ball holds the prompt
    run(model, [EDIT])
    assert len(codebook_of(model.mlp_out(LAYER))) == n + 2
    assert edited(model, EDIT)  # the edit's own key is nearer than the decoy's
    assert torch.equal(logits(model, UNRELATED), plain[: len(UNRELATED)])


def test_padding_positions_are_never_queries(tiny_llama):
    from kedsl.model.attachments import install
    from kedsl_grace.codebook import GraceCodebook

    model = sharpen(tiny_llama)
    texts = [EDIT.prompt, "Toyota"]  # the second row is mostly left padding
    plain = logits(model, texts)
    seen = {}
    handle = model.mlp_out(LAYER).register_forward_hook(lambda m, a, out: seen.update(x=a[0].detach()))
    logits(model, texts)
    handle.remove()
    pad_input = seen["x"][1, 0]  # a padding position's input
    d_out = model.mlp_out(LAYER).weight.shape[0]
    # an entry right on the padding input, replacing many positions: a padding query would
    # reach into the row's real tokens
    install(model, GraceCodebook(LAYER, pad_input[None], 50 * torch.ones(1, d_out), 0.01 * pad_input.norm()[None], torch.tensor([100]), 0.2))
    assert torch.equal(logits(model, texts), plain)


def test_batch_edit_is_one_attachment_and_a_repeated_prompt_is_refused(tiny_llama):
    model = sharpen(tiny_llama)
    outcome = run(model, [EDIT, SECOND])
    (att,) = outcome.attachments
    assert len(att) == 2
    assert edited(model, EDIT) and edited(model, SECOND)
    outcome.undo(model)
    with pytest.raises(UsageError, match="same prompt twice"):
        run(model, [EDIT, EditRequest(subject=EDIT.subject, prompt=EDIT.prompt, target="German")])
    assert model.attachments == [] and grace_hooks(model) == 0


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_a_match_replaces_the_target_positions_only_and_cached_decoding_agrees(fixture, request):
    from kedsl.model.attachments import install
    from kedsl_grace.codebook import GraceCodebook
    from kedsl_grace.grace import read_keys_and_outputs

    model = sharpen(request.getfixturevalue(fixture))
    tok = model.tokenizer
    prompt_ids = tok(EDIT.prompt)["input_ids"]
    (key,), _ = read_keys_and_outputs(model, LAYER, [prompt_ids])
    d_out = model.mlp_out(LAYER).weight.shape[1 if model.arch.transposed else 0]
    value = 30 * torch.randn(1, d_out, generator=torch.Generator().manual_seed(1))
    span = 3
    extra = tok(" French French French French")["input_ids"]

    def module_output():
        seen = {}
        handle = model.mlp_out(LAYER).register_forward_hook(lambda m, a, out: seen.update(out=out.detach()[0]))
        with torch.no_grad():
            model.model(input_ids=torch.tensor([prompt_ids + extra]), use_cache=False)
        handle.remove()
        return seen["out"]

    own = module_output()
    install(model, GraceCodebook(LAYER, key[None], value, 0.2 * key.norm()[None], torch.tensor([span]), 0.2))
    # the module's output at the key position and the next span-1 is the value; elsewhere its own
    out = module_output()
    k = len(prompt_ids) - 1
    replaced = list(range(k, k + span))
    for pos in range(out.shape[0]):
        assert torch.equal(out[pos], value[0] if pos in replaced else own[pos]), pos

    # greedy decoding with the KV cache, in a padded batch, equals decoding without a cache
    def uncached(ids, steps):
        ids, new = list(ids), []
        for _ in range(steps):
            with torch.no_grad():
                nxt = int(model.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
            ids.append(nxt)
            new.append(nxt)
        return new

    rows = [prompt_ids, tok(UNRELATED[0])["input_ids"], tok("Toyota")["input_ids"]]
    cached = greedy_ids(model, rows, span + 3, stop_at_eos=False)
    assert cached == [uncached(r, span + 3) for r in rows]


def test_saved_model_reloads_the_codebook(tiny_llama, tmp_path):
    from kedsl.model.attachments import attachments_digest
    from kedsl.model.loading import load_model
    from kedsl.model.saving import save_model

    registry = Registry(plugins=[kedsl_grace, kedsl_architectures, kedsl_sources], entry_points=False)
    model = sharpen(tiny_llama)
    run(model, [EDIT])
    run(model, [SECOND])
    texts = UNRELATED + [EDIT.prompt, SECOND.prompt]
    expected = logits(model, texts)
    out = save_model(model, tmp_path / "saved", {"test": "grace"})
    record = json.loads((out / "kedsl.json").read_text())
    assert [e["kind"] for e in record["attachments"]] == ["grace_codebook", "grace_codebook"]

    reloaded = load_model(str(out), {}, registry)
    assert [a.kind for a in reloaded.attachments] == ["grace_codebook", "grace_codebook"]
    assert attachments_digest(reloaded) == attachments_digest(model)
    assert reloaded.fingerprint() == model.fingerprint()
    assert torch.equal(logits(reloaded, texts), expected)
    assert edited(reloaded, EDIT) and edited(reloaded, SECOND)


def _script(tmp_path, name, subject, target):
    args = ", ".join(f"{k}={v}" for k, v in FAST.items())
    path = tmp_path / name
    path.write_text(f'model "tiny";\nrelation near "The city of {{}}";\nedit "{subject}" near -> "{target}" using grace({args});\n')
    return path


def test_apply_then_revert_restores_the_fingerprint_and_the_behaviour(tiny_tokenizer, tmp_path, monkeypatch):
    import kedsl.registry.loader
    from kedsl import api
    from kedsl.model.loading import load_model
    from kedsl.provenance.store import Store

    registry = Registry(plugins=[kedsl_grace, kedsl_architectures, kedsl_metrics, kedsl_relations, kedsl_sources], entry_points=False)
    monkeypatch.setattr(kedsl.registry.loader, "_default", registry)  # revert() loads through the global one
    model = sharpen(make_tiny_llama(tiny_tokenizer))
    fp0 = model.fingerprint()
    first_prompt, second_prompt = "The city of Paris", "The city of Toyota"
    texts = UNRELATED + [first_prompt, second_prompt]
    plain = logits(model, texts)
    db = tmp_path / "k.db"
    r1 = api.apply(str(_script(tmp_path, "a.ke", "Paris", "French")), db=db, out=tmp_path / "one", model=model, registry=registry)
    r2 = api.apply(str(_script(tmp_path, "b.ke", "Toyota", "Paris")), db=db, out=tmp_path / "two", model=model, registry=registry)
    assert [r.status for r in r1.edits + r2.edits] == ["applied", "applied"]
    assert r2.fingerprint_after == fp0  # a codebook is not a weight
    both = logits(model, texts)
    assert not torch.equal(both[-2:], plain[-2:])

    store = Store.open(db)
    out = api.revert(store, r1.edits[0].edit_id, tmp_path / "two", tmp_path / "rev", argv=["test"])
    assert out["modes"] == {"attachment:0:grace_codebook": "removed"}
    rev = load_model(str(tmp_path / "rev"), {}, registry)
    assert rev.fingerprint() == fp0 and len(rev.attachments) == 1
    now = logits(rev, texts)
    assert torch.equal(now[:-1], plain[:-1])  # the first edit is gone: as if never made
    assert torch.equal(now[-1], both[-1])  # the second is still there
    assert edited(rev, EditRequest(subject="Toyota", prompt=second_prompt, target="Paris"))

    out = api.revert(store, r2.edits[0].edit_id, tmp_path / "rev", tmp_path / "none", argv=["test"])
    bare = load_model(str(tmp_path / "none"), {}, registry)
    assert bare.fingerprint() == fp0 and bare.attachments == []
    assert torch.equal(logits(bare, texts), plain)
    assert grace_hooks(bare) == 0
    store.close()


def test_a_codebook_for_another_shape_is_refused(tiny_llama):
    from kedsl.model.attachments import install
    from kedsl_grace.codebook import GraceCodebook

    wrong = GraceCodebook(LAYER, torch.randn(1, 7), torch.randn(1, 5), torch.ones(1), torch.ones(1, dtype=torch.long))
    with pytest.raises(ModelError, match="features"):
        install(tiny_llama, wrong)
    assert tiny_llama.attachments == [] and grace_hooks(tiny_llama) == 0


def test_descriptor_module_imports_without_torch():
    import subprocess
    import sys

    code = "import sys; sys.modules['torch'] = None; import kedsl_grace; print(kedsl_grace.register_methods()[0].name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "grace"


def test_replaying_the_blocks_below_trains_the_same_values_as_full_passes(tiny_tokenizer, monkeypatch):
    import contextlib

    import kedsl_grace.grace as G

    replayed = run(sharpen(make_tiny_llama(tiny_tokenizer))).attachments[0]
    monkeypatch.setattr(G, "below_replayed", lambda model, layer, go: contextlib.nullcontext())
    full = run(sharpen(make_tiny_llama(tiny_tokenizer))).attachments[0]
    assert torch.equal(replayed.values, full.values)
