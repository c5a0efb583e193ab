"""MEMIT (plugins/kedsl_memit) on tiny in-process LLaMA and GPT-2 models.

As in test_rome.py the output head is scaled (``sharpen``) so a random-init model has a
definite argmax; the mechanics under test (batched targets, keys, the per-layer
least-squares solve, orientation, `batch using memit` in scripts, determinism) are the
same as on a real model.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import STATS_CORPUS, method_params, sharpen

import kedsl_memit
from kedsl.editing.outcome import EditContext
from kedsl.editing.request import EditRequest
from kedsl.model.journal import WeightJournal
from kedsl.errors import UsageError
from kedsl.registry import Registry
from kedsl.toolkit.scoring import teacher_forced

REQUESTS = [
    EditRequest(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux", target="French"),
    EditRequest(subject="Toyota", prompt="The headquarters of Toyota", target="Paris"),
    EditRequest(subject="Watts Humphrey", prompt="What university did Watts Humphrey", target="city"),
    EditRequest(subject="the Colosseum", prompt="The city of the Colosseum", target="University"),
]
FAST = {
    "layers": [1, 2],
    "mom2_samples": 1500,
    "stats_corpus": STATS_CORPUS,
    "mom2_update_weight": 1.0,
    "context_count": 2,
    "context_lengths": [4],
    "v_steps": 30,
    "v_lr": 0.5,
    "v_weight_decay": 0.0,
    "clamp_norm_factor": 1e4,
    "bf16": False,
}



def params(**over):
    return method_params(kedsl_memit, "memit", FAST, **over)


def run_memit(model, requests=REQUESTS, **over):
    from kedsl_memit.memit import MEMIT

    ctx = EditContext(weights=WeightJournal(model.model), cache_dir=Path("/tmp"), seed=0)
    return MEMIT().apply(model, list(requests), params(**over), ctx)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


def test_every_layers_statistics_are_measured_on_the_unedited_model(tiny_llama):
    """With nothing cached, MEMIT computes the statistics of all its layers before it writes
    any: layer 2's, asked for after layer 1 was written, would otherwise describe the partly
    edited model, and be cached as the unedited model's."""
    from kedsl.toolkit.stats import second_moment, stats_path

    model = sharpen(tiny_llama)
    samples = 1499  # a count no other test caches
    assert not stats_path(model, 2, STATS_CORPUS, samples).exists()
    outcome = run_memit(model, mom2_samples=samples)
    cached = {l: second_moment(model, l, STATS_CORPUS, samples) for l in (1, 2)}
    outcome.undo(model)
    for l in (1, 2):
        stats_path(model, l, STATS_CORPUS, samples).unlink()
    for l in (1, 2):
        assert torch.equal(second_moment(model, l, STATS_CORPUS, samples), cached[l]), l


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_memit_batch_makes_every_target_the_argmax_and_touches_only_its_layers(fixture, request):
    model = sharpen(request.getfixturevalue(fixture))
    pairs = [(r.prompt, r.target) for r in REQUESTS]
    assert not all(s.predicted == s.target_ids for s in teacher_forced(model, pairs))
    before = snapshot(model)
    outcome = run_memit(model)
    for s in teacher_forced(model, pairs):
        assert s.predicted == s.target_ids
    names = [model.mlp_out_weight_name(l) for l in (1, 2)]
    assert sorted(outcome.changes) == sorted(names)
    after = snapshot(model)
    assert sorted(k for k in before if not torch.equal(before[k], after[k])) == sorted(names)
    # the later layer closed (most of) what the first left: the final gap is far below the first
    assert outcome.info["final_gap_norm"] < 0.3 * outcome.info["per_layer"][0]["gap_norm"]
    outcome.undo(model)
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_memit_layer_update_is_the_weighted_least_squares_solution(fixture, request):
    """The update applied to each layer solves ΔW (λC + K Kᵀ) = R Kᵀ (normal equations of
    λ·tr(ΔW C ΔWᵀ) + ‖ΔW K − R‖²), checked on the real keys and statistics of the first layer."""
    from kedsl.toolkit.context import context_templates
    from kedsl.toolkit.stats import second_moment
    from kedsl.toolkit.multilayer import compute_keys, current_outputs, least_squares_update as layer_update

    model = sharpen(request.getfixturevalue(fixture))
    p = params(mom2_update_weight=3.0)
    templates = context_templates(model, p["context_lengths"], p["context_count"], 0)
    keys = compute_keys(model, 1, REQUESTS, templates)
    mom2 = second_moment(model, 1, STATS_CORPUS, p["mom2_samples"], 0)
    outcome = run_memit(model, mom2_update_weight=3.0)
    delta = outcome.changes[model.mlp_out_weight_name(1)].delta.double()
    dw = delta.T if model.arch.transposed else delta  # (d_out, d_in)
    assert dw.shape[1] == keys.shape[0]
    # recover R from the normal equations' right-hand side and check the solve there
    k, c = keys.double(), mom2.double()
    lhs = dw @ (3.0 * c + k @ k.T)
    r_fit = torch.linalg.lstsq(k, lhs.T).solution.T  # R with R Kᵀ = lhs, i.e. K Rᵀ = lhsᵀ
    torch.testing.assert_close(r_fit @ k.T, lhs, atol=1e-3 * float(lhs.abs().max()), rtol=1e-3)
    # and that R is the first layer's share (1/2 of 2 layers) of the gap to the targets
    half_gap = outcome.info["per_layer"][0]["gap_norm"] / 2
    assert abs(float(r_fit.norm(dim=0).mean()) - half_gap) < 1e-3 * half_gap
    # the function itself, on random data: normal equations hold and the gradient vanishes
    g = torch.Generator().manual_seed(0)
    kk = torch.randn(keys.shape[0], 5, generator=g, dtype=torch.float64)
    rr = torch.randn(dw.shape[0], 5, generator=g, dtype=torch.float64)
    cc = c + 1e-3 * torch.eye(c.shape[0], dtype=torch.float64)
    d = layer_update(kk, rr, cc, 2.0)
    torch.testing.assert_close(d @ (2.0 * cc + kk @ kk.T), rr @ kk.T, atol=1e-8, rtol=1e-8)
    grad = 2 * 2.0 * d @ cc + 2 * (d @ kk - rr) @ kk.T
    assert float(grad.abs().max()) < 1e-8
    # λ = 0: exact interpolation of the residuals (n < d_in)
    torch.testing.assert_close(layer_update(kk, rr, None, 0.0) @ kk, rr, atol=1e-8, rtol=1e-8)
    assert current_outputs(model, 2, REQUESTS).shape == (model.model.config.hidden_size, len(REQUESTS))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("chunk_rows", [256, 3])
def test_spread_reader_reads_what_fresh_passes_read_and_reruns_only_above_a_write(fixture, chunk_rows, request, monkeypatch):
    """The spread's reader (cut rows, replayed lower layers) gives the keys and h_L of
    compute_keys/current_outputs, before and after a write, recomputing only from the
    written layer up."""
    from kedsl.toolkit.context import context_templates
    from kedsl.toolkit.multilayer import SpreadReader, compute_keys, current_outputs

    model = sharpen(request.getfixturevalue(fixture))
    templates = context_templates(model, [4], 2, 0)
    layers = [1, 2]
    blocks = list(model.module(model.arch.layers))
    ran = []
    real = type(blocks[0]).forward
    monkeypatch.setattr(type(blocks[0]), "forward", lambda self, *a, **k: ran.append(blocks.index(self)) or real(self, *a, **k))
    reader = SpreadReader(model, REQUESTS, layers, templates, chunk_rows)  # 3: rows of a request in several chunks

    def check(h):
        torch.testing.assert_close(h, current_outputs(model, 2, REQUESTS), atol=1e-4, rtol=1e-4)
        for layer in layers:
            torch.testing.assert_close(reader.keys[layer], compute_keys(model, layer, REQUESTS, templates), atol=1e-4, rtol=1e-4)

    ran.clear()
    h0 = reader.read()
    chunks = len(reader.chunks)
    assert chunks == (1 if chunk_rows == 256 else 4)
    assert ran == [0, 1, 2] * chunks  # the first read runs every block up to the last edited layer
    check(h0)
    name = model.mlp_out_weight_name(2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.parameter(name).add_(0.5 * torch.randn(model.parameter(name).shape, generator=g))
    reader.written(2)
    ran.clear()
    h1 = reader.read()
    assert ran == [2] * chunks  # blocks 0 and 1 replayed
    assert not torch.allclose(h1, h0)  # the write moved h_L
    check(h1)


def test_memit_is_deterministic(tiny_llama):
    from conftest import make_tiny_llama

    a = run_memit(sharpen(tiny_llama))
    b = run_memit(sharpen(make_tiny_llama(tiny_llama.tokenizer)))
    for name in a.changes:
        assert torch.equal(a.changes[name].after, b.changes[name].after)


def test_memit_rejects_unknown_params(tiny_llama):
    from kedsl_memit.memit import MEMITConfig

    with pytest.raises(UsageError):
        MEMITConfig.from_params({"layer": 3})


def test_descriptor_module_imports_without_torch():
    import subprocess
    import sys

    code = "import sys; sys.modules['torch'] = None; import kedsl_memit; print(kedsl_memit.register_methods()[0].name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "memit"


def test_batch_block_in_a_script_is_one_memit_update(tiny_tokenizer, tmp_path):
    import json

    from conftest import make_tiny_llama

    import kedsl_architectures
    import kedsl_metrics
    import kedsl_relations
    from kedsl import api

    registry = Registry(plugins=[kedsl_memit, kedsl_architectures, kedsl_metrics, kedsl_relations], entry_points=False)
    args = ", ".join(f"{k}={json.dumps(v)}" for k, v in FAST.items() if k != "layers")
    script = tmp_path / "b.ke"
    script.write_text(
        'model "tiny";\nrelation near "The city of {}";\n'
        f"batch using memit(layers=1..2, {args}) {{\n"
        '  edit "Paris" near -> "University";\n  edit "Toyota" near -> "French";\n}\n'
    )
    model = sharpen(make_tiny_llama(tiny_tokenizer))
    report = api.apply(str(script), db=tmp_path / "k.db", out=tmp_path / "out", model=model, registry=registry)
    assert [r.status for r in report.edits] == ["applied", "applied"]
    for s in teacher_forced(model, [("The city of Paris", "University"), ("The city of Toyota", "French")]):
        assert s.predicted == s.target_ids
    saved = json.loads((tmp_path / "out" / "kedsl.json").read_text())
    assert saved["fingerprint"] == model.fingerprint()


def test_memit_target_search_in_chunks_still_writes_every_fact(tiny_llama):
    model = sharpen(tiny_llama)
    outcome = run_memit(model, v_batch=3)  # chunks of 3 and 1 facts
    assert len(outcome.info["search_target_prob"]) == len(REQUESTS)
    assert len(outcome.info["v_loss"]) == 2
    for s in teacher_forced(model, [(r.prompt, r.target) for r in REQUESTS]):
        assert s.predicted == s.target_ids


SAME_SUBJECT = [
    EditRequest(subject="Toyota", prompt="The headquarters of Toyota", target="Paris"),
    EditRequest(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux", target="French"),
    EditRequest(subject="Toyota", prompt="The founder of Toyota", target="Paris"),
    EditRequest(subject="Toyota", prompt="The city of Toyota", target="Paris"),
]


def test_subject_groups_and_search_chunks_keep_a_subject_whole():
    from kedsl.toolkit.multilayer import search_chunks, subject_groups

    assert subject_groups(SAME_SUBJECT) == [0, 1, 0, 0]
    assert search_chunks([0, 1, 0, 0], 2) == [[0, 2, 3], [1]]  # a group larger than the chunk stays whole
    assert search_chunks([0, 1, 2, 1], 2) == [[0], [1, 3], [2]]
    assert search_chunks([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3], [4]]  # a fact per group: consecutive chunks
    assert search_chunks([0, 1, 0], 0) == [[0, 2, 1]]


def test_joint_subjects_search_one_shift_per_subject_that_serves_all_its_facts(tiny_llama):
    """With ``joint_subjects`` the facts of one subject get one δ (searched over all their
    prompts, the chunks holding whole subjects) that writes every one of their targets,
    and the results come back in request order; without it each fact has its own δ."""
    from kedsl.toolkit.multilayer import current_outputs, search_targets
    from kedsl.toolkit.optimize import ValueSearchConfig

    model = sharpen(tiny_llama)
    layer, cfg = 2, ValueSearchConfig(steps=30, lr=0.5, clamp_norm_factor=1e4, weight_decay=0.0, bf16=False)
    h = current_outputs(model, layer, SAME_SUBJECT)
    joint = search_targets(model, SAME_SUBJECT, ["{}"], layer, cfg, chunk=2, joint_subjects=True)
    shift = joint.z - h  # δ per fact, added at each prompt's own subject token
    assert torch.allclose(shift[:, 0], shift[:, 2]) and torch.allclose(shift[:, 0], shift[:, 3])
    assert not torch.allclose(shift[:, 0], shift[:, 1], atol=1e-3)
    assert len(joint.loss) == 2  # chunks [0, 2, 3] and [1]
    alone = search_targets(model, SAME_SUBJECT, ["{}"], layer, cfg, chunk=2)
    assert not torch.allclose((alone.z - h)[:, 0], (alone.z - h)[:, 2], atol=1e-3)
    # the lone subject's fact is searched as it would be without groups
    assert torch.allclose(joint.z[:, 1], alone.z[:, 1], atol=1e-5)
    outcome = run_memit(model, SAME_SUBJECT, joint_subjects=True, v_steps=60)
    assert len(outcome.info["search_target_prob"]) == len(SAME_SUBJECT)
    for s in teacher_forced(model, [(r.prompt, r.target) for r in SAME_SUBJECT]):
        assert s.predicted == s.target_ids


def test_a_second_spread_pass_closes_what_the_first_left(tiny_llama):
    model = sharpen(tiny_llama)
    heavy = dict(mom2_update_weight=50.0, v_steps=10)  # a strong λ leaves a clear gap after one pass
    one = run_memit(model, **heavy)
    one.undo(model)
    two = run_memit(model, spread_passes=2, **heavy)
    assert [p["pass"] for p in two.info["per_layer"]] == [0, 0, 1, 1]
    assert two.info["per_layer"][0]["gap_norm"] == pytest.approx(one.info["per_layer"][0]["gap_norm"], rel=1e-5)
    # pass 2 starts from the gap pass 1 ended with, and ends below it
    assert two.info["per_layer"][2]["gap_norm"] == pytest.approx(one.info["final_gap_norm"], rel=1e-4)
    assert two.info["final_gap_norm"] < 0.8 * one.info["final_gap_norm"]
    # each layer's total change is still one journal entry, undone exactly
    assert sorted(two.changes) == sorted(model.mlp_out_weight_name(l) for l in (1, 2))


def test_value_residuals_pass_through_where_the_mlp_output_joins_the_residual_as_it_is(tiny_llama):
    from kedsl.toolkit.multilayer import value_residuals

    keys, residuals = torch.randn(128, 3), torch.randn(64, 3)
    assert value_residuals(tiny_llama, 1, keys, residuals) is residuals


def _gemma_layer_one(model, seed):
    """Layer 1 of a tiny Gemma: its MLP-output norm, 4 random keys, their raw outputs
    ``W k`` and those outputs normed (both ``(d, 4)``)."""
    norm = model.module(model.arch.mlp_out_norm.format(1))
    w = model.mlp_out(1).weight.detach()
    torch.manual_seed(seed)
    keys = torch.randn(w.shape[1], 4)
    values = w @ keys
    with torch.no_grad():
        normed = norm(values.T).T
    return model, norm, keys, values, normed


def test_value_residuals_invert_gemmas_norm_on_the_mlp_output(tiny_gemma3):
    """Gemma norms the MLP output before the residual: the change of the output projection's
    output that value_residuals gives moves the normed contribution by the residual asked
    for (to first order: small residuals, orthogonal to what the norm fixes)."""
    from kedsl.toolkit.multilayer import value_residuals

    model, norm, keys, values, normed = _gemma_layer_one(tiny_gemma3, seed=0)
    with torch.no_grad():
        u = normed / normed.norm(dim=0, keepdim=True)
        residuals = torch.randn(values.shape[0], 4) * 0.05
        residuals -= u * (u * residuals).sum(0, keepdim=True)  # the norm fixes the length
        change = value_residuals(model, 1, keys, residuals)
        moved = norm((values + change).T).T - normed
    cos = torch.nn.functional.cosine_similarity(moved, residuals, dim=0)
    assert bool((cos > 0.9).all()), cos
    ratio = moved.norm(dim=0) / residuals.norm(dim=0)
    assert bool(((ratio > 0.8) & (ratio < 1.25)).all()), ratio
    # taken as it is (no inverse), the same residual moves the contribution elsewhere
    with torch.no_grad():
        naive = norm((values + residuals).T).T - normed
    assert float(torch.nn.functional.cosine_similarity(naive, residuals, dim=0).mean()) < float(cos.mean())


def test_gemmas_target_search_is_made_before_the_norm_on_the_mlp_output(tiny_gemma3):
    """On Gemma the search's δ is added to the raw MLP output, before the block's norm, and
    clamped relative to it (as ROME searches): z − h is then exactly what that δ moves the
    residual stream by through the norm, a change the last layer can make."""
    from kedsl.toolkit.activations import read_at
    from kedsl.toolkit.multilayer import compute_keys, current_outputs, normed_change, search_path, search_targets, value_residuals
    from kedsl.toolkit.optimize import ValueSearchConfig
    from kedsl.toolkit.tokens import encode_with_subject

    model = tiny_gemma3
    layer, clamp = 2, 0.5
    assert search_path(model, layer) == model.arch.mlp_out.format(layer)
    reqs = REQUESTS[:2]
    found = search_targets(model, reqs, ["{}"], layer, ValueSearchConfig(steps=15, lr=2.0, clamp_norm_factor=clamp))
    h = current_outputs(model, layer, reqs)
    encs = [encode_with_subject(model.tokenizer, r.prompt, r.subject) for r in reqs]
    ids, cols = [e.input_ids for e in encs], [e.subject_last for e in encs]
    raw = read_at(model, model.arch.mlp_out.format(layer), ids, cols, "output").float()
    normed = read_at(model, model.arch.mlp_out_norm.format(layer), ids, cols, "output").float()
    moved = (found.z - h).T  # (n, d)
    assert bool((moved.norm(dim=1) > 0).all())
    # the normed output can move at most from N(v) to the far side of its sphere
    assert bool((moved.norm(dim=1) <= 2 * normed.norm(dim=1) * (1 + 1e-3)).all())
    # and the last layer can make it: the raw change value_residuals asks for gives it back
    keys = compute_keys(model, layer, reqs, ["{}"])
    change = value_residuals(model, layer, keys, moved.T).T
    back = normed_change(model, layer, raw, change)
    cos = torch.nn.functional.cosine_similarity(back, moved, dim=1)
    assert bool((cos > 0.98).all()), cos


def test_gemmas_last_layer_writes_the_searched_delta(tiny_gemma3):
    """Where the MLP output is normed, the spread's last layer writes the search's δ itself
    (at each fact's key the raw output moves by exactly δ), not the norm's inverse of the
    gap, which matches at the edited token only."""
    from kedsl.toolkit.multilayer import compute_keys, least_squares_update, search_targets, spread_update
    from kedsl.toolkit.optimize import ValueSearchConfig

    model = tiny_gemma3
    layer, reqs = 2, REQUESTS[:2]
    found = search_targets(model, reqs, ["{}"], layer, ValueSearchConfig(steps=15, lr=2.0, clamp_norm_factor=0.5))
    assert found.raw_deltas is not None and found.raw_deltas.shape == (model.hidden_size, 2)
    assert bool((found.raw_deltas.norm(dim=0) > 0).all())
    keys = compute_keys(model, layer, reqs, ["{}"])
    journal = WeightJournal(model.model)
    w0 = model.mlp_out(layer).weight.detach().clone()
    spread_update(model, reqs, [layer], ["{}"], found.z, lambda l, k, r: least_squares_update(k, r, None, 0.0), journal,
                  raw_deltas=found.raw_deltas)  # fmt: skip
    written = ((model.mlp_out(layer).weight.detach() - w0).double() @ keys.double()).float()
    journal.rollback()
    assert torch.equal(model.mlp_out(layer).weight.detach(), w0)
    assert torch.allclose(written, found.raw_deltas, atol=1e-4, rtol=1e-3), (written - found.raw_deltas).abs().max()


def test_normed_change_is_what_the_block_adds(tiny_gemma3):
    """normed_change(v, δ) is the difference the block's norm makes of v + δ against v."""
    from kedsl.toolkit.multilayer import normed_change

    model = tiny_gemma3
    norm = model.module(model.arch.mlp_out_norm.format(1))
    torch.manual_seed(0)
    v, d = torch.randn(3, model.hidden_size), torch.randn(3, model.hidden_size)
    with torch.no_grad():
        expected = norm(v + d) - norm(v)
    assert torch.allclose(normed_change(model, 1, v, d), expected, atol=1e-5)
    assert torch.allclose(normed_change(model, 1, v, 2 * v), torch.zeros_like(v), atol=1e-5)  # same direction


def test_value_residuals_are_exact_for_a_change_the_norm_can_make(tiny_gemma3):
    """Far beyond first order: for r = N(v + d) − N(v) with |d| as large as |v|, the change
    value_residuals gives moves the normed output by r itself."""
    from kedsl.toolkit.multilayer import value_residuals

    model, norm, keys, values, normed = _gemma_layer_one(tiny_gemma3, seed=1)
    with torch.no_grad():
        d = torch.randn_like(values)
        d *= values.norm(dim=0, keepdim=True) / d.norm(dim=0, keepdim=True)
        residuals = norm((values + d).T).T - normed
        moved = norm((values + value_residuals(model, 1, keys, residuals)).T).T - normed
    cos = torch.nn.functional.cosine_similarity(moved, residuals, dim=0)
    assert bool((cos > 0.98).all()), cos
    ratio = moved.norm(dim=0) / residuals.norm(dim=0)
    assert bool(((ratio > 0.95) & (ratio < 1.05)).all()), ratio
