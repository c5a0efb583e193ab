"""The shared editing toolkit: activations, tokens with subject, context templates,
second-moment statistics with their cache, the value search (tiny in-process models), and
the update rules' shared solve."""
from __future__ import annotations

import json

import pytest
import torch

from kedsl.toolkit import activations as act
from kedsl.toolkit import context as ctxmod
from kedsl.toolkit import stats as statsmod
from kedsl.toolkit.linear_algebra import solve_product
from kedsl.toolkit.multilayer import residual_path
from kedsl.toolkit.optimize import Fact, ValueSearchConfig, layers_below, search_values
from kedsl.toolkit.activations import make_batch, make_split_batch, pad_id, prefix_keys_values, run_suffix
from kedsl.toolkit.tokens import encode_pair, encode_with_subject

PROMPT = "The Eiffel Tower is located in the city of"
SUBJECT = "The Eiffel Tower"


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.model.modules())


# -- tokens --------------------------------------------------------------------------


def test_encode_with_subject_matches_encode_pair_and_finds_subject(tiny_tokenizer):
    enc = encode_with_subject(tiny_tokenizer, PROMPT, SUBJECT, "Rome", prefix="The Louvre. ")
    pair = encode_pair(tiny_tokenizer, "The Louvre. " + PROMPT, "Rome")
    assert enc.input_ids == pair.input_ids
    assert enc.target_ids == pair.target_ids and enc.prompt_len == pair.prompt_len
    text = tiny_tokenizer.decode(enc.input_ids[enc.subject.start : enc.subject.stop])
    assert text.strip() == SUBJECT
    assert enc.subject_last < enc.prompt_len


def test_encode_with_subject_ignores_subject_in_prefix_and_target(tiny_tokenizer):
    prefix = "Paris. "
    enc = encode_with_subject(tiny_tokenizer, "The Louvre is in Paris", "Paris", "Paris", prefix=prefix)
    # the prompt's "Paris", not the prefix's nor the target's
    first_target = enc.prompt_len
    assert enc.subject_last == first_target - 1
    alone = encode_with_subject(tiny_tokenizer, "The Louvre is in Paris", "Paris", prefix=prefix)
    assert alone.subject == enc.subject and alone.target_ids == []
    with pytest.raises(ValueError):
        encode_with_subject(tiny_tokenizer, PROMPT, "Colosseum")


# -- activations ---------------------------------------------------------------------


def test_read_at_is_padding_invariant_and_matches_full_trace(tiny_llama):
    tok = tiny_llama.tokenizer
    rows = [tok(PROMPT)["input_ids"], tok("The Louvre")["input_ids"]]
    path = tiny_llama.arch.mlp_out.format(1)
    both = act.read_at(tiny_llama, path, rows, [3, -1], "input")
    alone = act.read_at(tiny_llama, path, rows[1:], [-1], "input")
    torch.testing.assert_close(both[1], alone[0], atol=1e-5, rtol=1e-5)
    # same value as a full forward's trace (the early stop changes nothing before it)
    with torch.no_grad(), act.trace(tiny_llama, [path], inputs=True, outputs=True) as rec:
        tiny_llama.model(input_ids=torch.tensor([rows[0]]))
    torch.testing.assert_close(both[0], rec.inputs[path][0, 3], atol=1e-5, rtol=1e-5)
    out = act.read_at(tiny_llama, path, rows[:1], [3], "output")
    torch.testing.assert_close(out[0], rec.outputs[path][0, 3], atol=1e-5, rtol=1e-5)
    assert _hook_count(tiny_llama) == 0


def test_hooks_removed_even_when_forward_fails(tiny_gpt2):
    path = tiny_gpt2.arch.mlp_out.format(0)
    with pytest.raises(RuntimeError, match="boom"):
        with act.edit_output(tiny_gpt2, path, lambda y: (_ for _ in ()).throw(RuntimeError("boom"))):
            tiny_gpt2.model(input_ids=torch.tensor([[1, 2, 3]]))
    assert _hook_count(tiny_gpt2) == 0


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_add_at_changes_only_its_row_from_its_column_on(fixture, request):
    model = request.getfixturevalue(fixture)
    tok = model.tokenizer
    rows = [tok(PROMPT)["input_ids"], tok("The Louvre is located in")["input_ids"]]
    batch = act.make_batch(rows, act.pad_id(tok))
    path = model.arch.mlp_out.format(1)
    with torch.no_grad():
        base = model.model(**batch.inputs()).logits
        col = batch.col(0, 3)
        vec = torch.randn(1, model.hidden_size)
        with act.add_at(model, path, [0], [col], vec):
            moved = model.model(**batch.inputs()).logits
    diff = (moved - base).abs().amax(-1)  # (rows, cols)
    assert diff[1].max() == 0  # other row untouched
    assert diff[0, :col].max() == 0  # causal: earlier tokens untouched
    assert diff[0, col:].min() > 0
    assert _hook_count(model) == 0


def test_replace_at_with_clean_values_restores_clean_run(tiny_llama):
    """Causal tracing's primitive: corrupt the input, restore a clean hidden state."""
    tok = tiny_llama.tokenizer
    clean = tok(PROMPT)["input_ids"]
    corrupt = list(clean)
    corrupt[1] = (corrupt[1] + 7) % len(tok)
    layer_path = f"{tiny_llama.arch.layers}.3"  # the last layer: restoring all cells there = clean run
    with torch.no_grad():
        with act.trace(tiny_llama, [layer_path], inputs=False, outputs=True) as rec:
            clean_logits = tiny_llama.model(input_ids=torch.tensor([clean])).logits
        h = rec.outputs[layer_path][0]
        n = len(clean)
        with act.replace_at(tiny_llama, layer_path, [0] * n, list(range(n)), h):
            restored = tiny_llama.model(input_ids=torch.tensor([corrupt])).logits
        plain = tiny_llama.model(input_ids=torch.tensor([corrupt])).logits
    torch.testing.assert_close(restored, clean_logits)
    assert not torch.allclose(plain, clean_logits)


def test_frozen_restores_requires_grad(tiny_llama):
    p = next(tiny_llama.model.parameters())
    p.requires_grad_(True)
    with act.frozen(tiny_llama):
        assert not any(q.requires_grad for q in tiny_llama.model.parameters())
    assert p.requires_grad


# -- context templates ---------------------------------------------------------------


def test_context_templates_deterministic_and_cached(tiny_llama, tiny_tokenizer, monkeypatch):
    from conftest import make_tiny_llama

    t1 = ctxmod.context_templates(tiny_llama, lengths=(3, 5), count=2, seed=1)
    assert t1[0] == "{}" and len(t1) == 5 and all(t.endswith(". {}") for t in t1[1:])
    other = make_tiny_llama(tiny_tokenizer)  # same weights, new object: same texts
    assert ctxmod.context_templates(other, lengths=(3, 5), count=2, seed=1) == t1
    assert ctxmod.context_templates(other, lengths=(3, 5), count=2, seed=2) != t1
    calls = []
    monkeypatch.setattr(ctxmod, "sample_texts", lambda *a, **k: calls.append(1) or [])
    assert ctxmod.context_templates(tiny_llama, lengths=(3, 5), count=2, seed=1) == t1
    assert calls == []
    assert ctxmod.context_templates(tiny_llama, count=0) == ["{}"]


# -- statistics ----------------------------------------------------------------------


def _keys(model, layer, rows):
    path = model.arch.mlp_out.format(layer)
    ks = []
    for r in rows:
        with torch.no_grad(), act.trace(model, [path]) as rec:
            model.model(input_ids=torch.tensor([r]))
        ks.append(rec.inputs[path][0])
    return torch.cat(ks)


def test_second_moment_from_text_file_matches_direct_computation(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("KEDSL_STATS_DIR", str(tmp_path / "stats"))
    corpus = tmp_path / "c.jsonl"
    texts = ["The Eiffel Tower is located in the city of Paris.", "Apple was founded by Steve Jobs.", "Berlin, London, Madrid"] * 3
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    rows = [tiny_gpt2.tokenizer(t)["input_ids"] for t in texts]
    n = sum(len(r) for r in rows) - 5  # cut inside the last document
    c = statsmod.second_moment(tiny_gpt2, 2, str(corpus), n)
    k = _keys(tiny_gpt2, 2, rows)[:n].double()
    torch.testing.assert_close(c.double(), k.T @ k / n, atol=1e-6, rtol=1e-5)
    assert c.shape == (4 * 64, 4 * 64)
    with pytest.raises(Exception, match="only"):
        statsmod.second_moment(tiny_gpt2, 2, str(corpus), 10_000)


def test_model_corpus_cached_and_layers_in_one_pass(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("KEDSL_STATS_DIR", str(tmp_path / "stats"))
    calls = []
    real = statsmod.sample_token_rows

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(statsmod, "sample_token_rows", counting)
    both = statsmod.second_moments(tiny_llama, [1, 3], samples=300, seed=0)
    assert calls == [1]
    files = sorted(p.name for p in (tmp_path / "stats").iterdir())
    assert sum(f.endswith(".safetensors") for f in files) == 2
    paths = [statsmod.stats_path(tiny_llama, l, "model", 300) for l in (1, 3)]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    # second run: cache hit, nothing sampled or rewritten
    again = statsmod.second_moments(tiny_llama, [1, 3], samples=300, seed=0)
    assert calls == [1] and [p.stat().st_mtime_ns for p in paths] == mtimes
    torch.testing.assert_close(again[1], both[1])
    # a new layer reuses the sampled corpus (no new sampling) and equals a joint pass
    (paths[0]).unlink()
    alone = statsmod.second_moment(tiny_llama, 1, samples=300, seed=0)
    assert calls == [1]
    torch.testing.assert_close(alone, both[1], atol=1e-6, rtol=1e-5)
    c = both[3]
    torch.testing.assert_close(c, c.T)
    assert torch.linalg.eigvalsh(c.double()).min() > -1e-6


# -- value search --------------------------------------------------------------------


def sharpen(model):
    """Random-init tiny models have a nearly flat output (logits within ~±1): scale the
    output head so that a hidden-state change can make one token clearly most likely.
    Their attention is random too, so test facts put the subject at the end of the
    prompt and use single-token targets (the value search moves the subject's last token)."""
    with torch.no_grad():
        model.model.get_output_embeddings().weight.mul_(20)
    return model


def test_value_search_reaches_target_and_batches_like_single(tiny_llama):
    model = sharpen(tiny_llama)
    path = model.arch.mlp_out.format(1)
    cfg = ValueSearchConfig(lr=0.5, steps=30, clamp_norm_factor=1e4, nll_tol=0.02)
    f1 = Fact("The mother tongue of Danielle Darrieux", "Danielle Darrieux", "French")
    f2 = Fact("Apple was founded by Steve Jobs", "Steve Jobs", "Paris")
    templates = ["{}", "Berlin. {}"]
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    both = search_values(model, path, [f1, f2], templates, cfg)
    assert all(p > 0.95 for p in both.target_prob)
    assert max(both.nll[-1]) < cfg.nll_tol < min(both.nll[0])
    assert both.steps >= 1 and len(both.loss) == both.steps + 1
    assert all(torch.equal(v, model.model.state_dict()[k]) for k, v in before.items())
    one = search_values(model, path, [f1], templates, cfg)
    assert one.target_prob[0] > 0.95
    if one.steps == both.steps:  # joint optimisation == separate when run equally long
        torch.testing.assert_close(one.deltas[0], both.deltas[0], atol=1e-4, rtol=1e-3)
    # the clamp bounds the vector's norm relative to the unedited output
    tight = search_values(model, path, [f1], templates, ValueSearchConfig(steps=5, clamp_norm_factor=0.5, nll_tol=0.0))
    assert float(tight.deltas.norm()) <= 0.5 * float(tight.initial.norm()) * (1 + 1e-5)
    with pytest.raises(ValueError):
        search_values(model, path, [f1], ["Berlin. {}"], cfg)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_add_rank_one_runs_the_module_as_the_edited_weight(fixture, request):
    """The value search's edit-aware mode must see exactly the model the rank-one weight
    edit will produce (GPT-2's Conv1D stores the weight transposed)."""
    model = request.getfixturevalue(fixture)
    tok = model.tokenizer
    batch = act.make_batch([tok(PROMPT)["input_ids"], tok("The Louvre is located in")["input_ids"]], act.pad_id(tok))
    path = model.arch.mlp_out.format(1)
    name = model.mlp_out_weight_name(1)
    w = model.parameter(name)
    d_in = w.shape[0] if model.arch.transposed else w.shape[1]
    torch.manual_seed(3)
    v, d = torch.randn(model.hidden_size), torch.randn(d_in) / d_in
    with torch.no_grad():
        with act.add_rank_one(model, path, v.expand(2, -1), d):
            hooked_logits = model.model(**batch.inputs()).logits
        assert _hook_count(model) == 0
        saved = w.clone()
        w.add_(torch.outer(d, v) if model.arch.transposed else torch.outer(v, d))
        edited_logits = model.model(**batch.inputs()).logits
        w.copy_(saved)
        base = model.model(**batch.inputs()).logits
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(hooked_logits[mask], edited_logits[mask], atol=1e-4, rtol=1e-4)
    assert (edited_logits - base)[mask].abs().max() > 1e-3  # the edit did something


def test_value_search_stops_only_when_the_plain_prompt_says_the_target(tiny_llama):
    """A low NLL averaged over templates is not enough: every target token must be the
    argmax after the plain prompt. The returned vector is the lowest-loss one seen."""
    model = sharpen(tiny_llama)
    path = model.arch.mlp_out.format(1)
    fact = Fact("The mother tongue of Danielle Darrieux", "Danielle Darrieux", "French")
    lax = ValueSearchConfig(lr=0.5, steps=30, clamp_norm_factor=1e4, nll_tol=1e9)  # NLL alone would stop at step 0
    res = search_values(model, path, [fact], ["{}", "Berlin. {}"], lax)
    assert res.steps >= 1
    enc = encode_with_subject(model.tokenizer, fact.prompt, fact.subject, fact.target)
    ids = torch.tensor([enc.input_ids[:-1]])
    with torch.no_grad(), act.add_at(model, path, [0], [enc.subject_last], res.deltas):
        logits = model.model(input_ids=ids).logits[0]
    n = len(enc.target_ids)
    assert logits[-n:].argmax(-1).tolist() == enc.target_ids
    # overshooting steps: the result is the best step's vector, not the last one
    wild = search_values(model, path, [fact], ["{}"], ValueSearchConfig(lr=40.0, steps=8, clamp_norm_factor=1e4, nll_tol=0.0))
    best = min(range(len(wild.loss)), key=wild.loss.__getitem__)
    assert wild.target_prob[0] == pytest.approx(float(torch.exp(-torch.tensor(wild.nll[best][0]))), rel=1e-5)


def test_rows_longer_than_a_sliding_window_are_not_split(tiny_gemma3, tiny_llama):
    from kedsl.toolkit.activations import sliding_window, splits_exactly

    assert sliding_window(tiny_gemma3.model) == 8 and sliding_window(tiny_llama.model) is None
    assert splits_exactly(tiny_gemma3.model, 8) and not splits_exactly(tiny_gemma3.model, 9)
    assert splits_exactly(tiny_llama.model, 10_000)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2", "tiny_gemma3", "tiny_qwen2"])
def test_split_rows_run_their_suffix_on_cached_prefix_exactly_as_whole_rows(fixture, request):
    model = request.getfixturevalue(fixture)
    net = model.model
    rows = [[5, 9, 13, 7, 21, 30], [8, 3, 44], [17, 2, 6, 6, 19, 4, 11, 12]]
    cuts = [3, 0, 5]  # a row without a prefix too
    sb = make_split_batch(rows, cuts, pad_id(model.tokenizer))
    assert sb.prefix_width == 5 and sb.suffix_ids.shape[1] == 3
    whole = make_batch(rows, pad_id(model.tokenizer))
    with torch.no_grad():
        ref = net(**whole.inputs(), use_cache=False).logits
        got = run_suffix(net, sb, prefix_keys_values(net, sb)).logits
    for i, r in enumerate(rows):
        n = len(r) - cuts[i]  # the suffix's tokens end every row in both layouts
        torch.testing.assert_close(got[i, -n:], ref[i, -n:], atol=1e-5, rtol=1e-4)
    assert [sb.suffix_offsets[i] + len(r) - c for i, (r, c) in enumerate(zip(rows, cuts))] == [3, 3, 3]
    with pytest.raises(ValueError):
        make_split_batch(rows, [3, 3, 5], 0)  # a cut at a row's end leaves no suffix


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("where", ["mlp_out", "residual"])
def test_value_search_on_cut_rows_finds_what_the_whole_rows_find(fixture, where, request, monkeypatch):
    model = sharpen(request.getfixturevalue(fixture))
    # ROME-style (inside layer 1: layer 0 is replayed) and MEMIT-style (layer 1's output:
    # layers 0 and 1 are replayed)
    path = model.arch.mlp_out.format(1) if where == "mlp_out" else residual_path(model, 1)
    layers = list(model.module(model.arch.layers))
    assert layers_below(model, path) == layers[: 1 if where == "mlp_out" else 2]
    facts = [Fact("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "French"),
             Fact("Steve Jobs", "Steve Jobs", "Paris")]  # the subject opens the prompt: a short prefix
    templates = ["{}", "Berlin is big. {}"]
    computed = []  # passes in which layer 0 really computed
    real = type(layers[0]).forward
    monkeypatch.setattr(type(layers[0]), "forward", lambda self, *a, **k: computed.append(self is layers[0]) or real(self, *a, **k))
    runs = []
    for cut in (True, False):
        computed.clear()
        runs.append(search_values(model, path, facts, templates, ValueSearchConfig(steps=6, nll_tol=0.0, bf16=False, prefix_cache=cut)))
        # cut: the prefix pass and the recording pass only; whole rows: the first pass and
        # the 7 of steps 0..6 (the last measures the sixth update)
        assert computed.count(True) == (2 if cut else 8)
    assert runs[0].steps == runs[1].steps == 6
    torch.testing.assert_close(runs[0].initial, runs[1].initial, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(runs[0].loss), torch.tensor(runs[1].loss), atol=1e-4, rtol=1e-4)
    # Adam divides by the gradient's size, which turns float noise in near-zero
    # coordinates into noticeable steps: compare loosely
    torch.testing.assert_close(runs[0].deltas, runs[1].deltas, atol=2e-3, rtol=1e-2)
    assert runs[0].deltas.abs().max() > 1e-3  # it moved


def test_replaying_returns_recorded_outputs_and_restores_an_instance_forward(tiny_llama):
    layers = list(tiny_llama.module(tiny_llama.arch.layers))
    own = layers[1].forward  # a bound method set on the instance, as accelerate's hooks do
    layers[1].forward = own
    marker = torch.full((1, 2, 3), 7.0)
    with act.replaying(layers[:2], [marker, marker]):
        assert layers[0](torch.zeros(1)) is marker and layers[1](torch.zeros(1)) is marker
    assert "forward" not in layers[0].__dict__  # the class's forward again
    assert layers[1].__dict__["forward"] is own
    del layers[1].forward


def test_the_shipped_questions_corpus_is_read_by_name(tiny_gpt2, tmp_path, monkeypatch):
    """`corpus="questions"` reads the question file shipped in kedsl/toolkit/corpora, from any
    working directory, under a cache key that names it and its content."""
    monkeypatch.setenv("KEDSL_STATS_DIR", str(tmp_path / "stats"))
    monkeypatch.chdir(tmp_path)  # not the checkout: the name, not a relative path, finds it
    shipped = statsmod.SHIPPED_CORPORA["questions"]
    lines = [l for l in shipped.read_text().splitlines() if l.strip()]
    assert len(lines) == 1000 and all(len(l.split()) >= 3 for l in lines)  # a question and its answer
    cid = statsmod.corpus_id("questions", 0)
    assert cid.startswith("questions-") and cid != statsmod.corpus_id(str(shipped), 0)
    rows = [tiny_gpt2.tokenizer(t)["input_ids"] for t in lines[:3]]
    n = sum(len(r) for r in rows)
    c = statsmod.second_moment(tiny_gpt2, 1, "questions", n)
    k = _keys(tiny_gpt2, 1, rows).double()
    torch.testing.assert_close(c.double(), k.T @ k / n, atol=1e-6, rtol=1e-5)
    assert statsmod.stats_path(tiny_gpt2, 1, "questions", n).exists()


def test_prepare_second_moments_takes_one_pass_and_holds_nothing(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("KEDSL_STATS_DIR", str(tmp_path / "stats"))
    passes = []
    real = statsmod._sum_outer_products

    def counting(model, layers, *a, **k):
        passes.append(list(layers))
        return real(model, layers, *a, **k)

    monkeypatch.setattr(statsmod, "_sum_outer_products", counting)
    assert statsmod.prepare_second_moments(tiny_llama, [3, 1, 2], samples=300) is None
    assert passes == [[1, 2, 3]]
    statsmod.prepare_second_moments(tiny_llama, [1, 2, 3, 0], samples=300)  # only the layer not cached
    assert passes == [[1, 2, 3], [0]]
    statsmod.prepare_second_moments(tiny_llama, [0, 3], samples=300)
    assert passes == [[1, 2, 3], [0]]


def test_both_orders_solve_the_same_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(8, 8, generator=g, dtype=torch.float64)
    a = m @ m.T + torch.eye(8, dtype=torch.float64)
    for n, p in ((3, 20), (20, 3), (5, 5)):  # few columns on the left, on the right, equal
        left = torch.randn(8, n, generator=g, dtype=torch.float64)
        right = torch.randn(n, p, generator=g, dtype=torch.float64)
        x = solve_product(a, left, right)
        assert x.shape == (8, p)
        assert float((a @ x - left @ right).abs().max()) < 1e-10
