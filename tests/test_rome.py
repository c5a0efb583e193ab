"""ROME (plugins/kedsl_rome) on tiny in-process LLaMA and GPT-2 models.

Random-init tiny models have a nearly flat output and random attention, so the tests
scale the output head (``sharpen``) and use facts whose subject ends the prompt with a
single-token target; the mechanics under test (key, value search, rank-one update,
orientation, undo, determinism) are the same as on a real model.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import method_params, sharpen

import kedsl_rome
from kedsl.editing.outcome import EditContext
from kedsl.editing.request import EditRequest
from kedsl.model.journal import WeightJournal
from kedsl.errors import UsageError
from kedsl.registry.params import resolve_params
from kedsl.registry.presets import MEASURED_MODELS, resolve_for_model
from kedsl.registry import Registry
from kedsl.toolkit.scoring import teacher_forced

REQUEST = EditRequest(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux", target="French")
UNRELATED = [
    "Apple was founded by Steve Jobs",
    "Toyota has its headquarters in Toyota City",
    "Berlin, London, Madrid, Tokyo",
    "the of and to in is was for on",
]
FAST = {
    "layer": 1,
    "mom2_samples": 1500,
    "context_count": 2,
    "context_lengths": [4],
    "v_steps": 20,
    "v_weight_decay": 0.0,
    "clamp_norm_factor": 1e4,
    "bf16": False,
}



def params(**over):
    return method_params(kedsl_rome, "rome", FAST, **over)


def run_rome(model, request=REQUEST, **over):
    from kedsl_rome.rome import ROME

    ctx = EditContext(weights=WeightJournal(model.model), cache_dir=Path("/tmp"), seed=0)
    return ROME().apply(model, [request], params(**over), ctx)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_rome_writes_the_fact_with_a_rank_one_change_of_one_weight(fixture, request):
    model = sharpen(request.getfixturevalue(fixture))
    before_score = teacher_forced(model, [(REQUEST.prompt, REQUEST.target)])[0]
    assert before_score.accuracy < 1.0
    before = snapshot(model)
    outcome = run_rome(model)
    score = teacher_forced(model, [(REQUEST.prompt, REQUEST.target)])[0]
    assert score.predicted == score.target_ids  # the target is the argmax continuation
    assert outcome.info["target_prob"] > 0.5
    name = model.mlp_out_weight_name(1)
    assert list(outcome.changes) == [name]
    after = snapshot(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [name]
    delta = outcome.changes[name].delta
    assert delta.shape == before[name].shape
    # after - before in float32 carries rounding noise ~1e-7 relative: rank at that tolerance
    sv = torch.linalg.svdvals(delta.double())
    assert sv[0] > 0 and float(sv[1] / sv[0]) < 1e-5
    assert torch.linalg.matrix_rank(delta.double(), rtol=1e-5) == 1
    assert outcome.info["layer"] == 1 and outcome.info["steps"] >= 1
    assert len(outcome.info["v_loss"]) == outcome.info["steps"] + 1


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_rome_key_side_is_the_input_side(fixture, request):
    """ΔW = δ uᵀ/(uᵀk*) with u = (λC+I)⁻¹k* along the projection's *input* dimension:
    GPT-2's Conv1D stores W as (in, out), LLaMA's Linear as (out, in)."""
    from kedsl.toolkit.context import context_templates
    from kedsl.toolkit.stats import second_moment
    from kedsl_rome.rome import compute_key

    model = sharpen(request.getfixturevalue(fixture))
    p = params()
    templates = context_templates(model, p["context_lengths"], p["context_count"], 0)
    key = compute_key(model, 1, REQUEST, templates)
    mom2 = second_moment(model, 1, "model", p["mom2_samples"], 0)
    u = torch.linalg.solve(p["mom2_update_weight"] * mom2.double() + torch.eye(key.shape[0], dtype=torch.float64), key.double())
    outcome = run_rome(model)
    delta = outcome.changes[model.mlp_out_weight_name(1)].delta.double()
    in_side = delta.T if not model.arch.transposed else delta  # rows = input features
    assert in_side.shape[0] == key.shape[0]
    left = torch.linalg.svd(in_side)[0][:, 0]
    assert abs(float(torch.nn.functional.cosine_similarity(left, u, dim=0))) > 0.999
    # the update maps k* to exactly δ-ish: ΔW applied to k* has unit gain along δ
    moved = key.double() @ in_side
    assert float(moved.norm()) > 0
    # the key direction reaches the output: the edited module's output at k* changes by ΔWk*
    mod = model.mlp_out(1)
    with torch.no_grad():
        outcome.undo(model)
        y0 = mod(key[None])
        outcome.redo(model)
        y1 = mod(key[None])
    torch.testing.assert_close((y1 - y0)[0].double(), moved, atol=1e-4, rtol=1e-3)


def test_rome_leaves_unrelated_prompts_nearly_unchanged(tiny_llama):
    """With the paper's norm bound (clamp 4x the unedited output) the edit's own prompt
    moves a lot while unrelated prompts barely move (measured: KL 2.0 on the edit prompt,
    at most 0.05 averaged over any unrelated prompt's positions, 90% of their argmaxes kept)."""
    model = sharpen(tiny_llama)
    tok = model.tokenizer

    def logprobs(texts):
        with torch.no_grad():
            return [model.model(input_ids=torch.tensor([tok(t)["input_ids"]])).logits[0].log_softmax(-1) for t in texts]

    def kl(p, q):
        return (p.exp() * (p - q)).sum(-1)

    base_edit, *base_other = logprobs([REQUEST.prompt] + UNRELATED)
    run_rome(model, clamp_norm_factor=4.0, v_weight_decay=1e-3)
    new_edit, *new_other = logprobs([REQUEST.prompt] + UNRELATED)
    kl_edit = float(kl(base_edit[-1], new_edit[-1]))
    kl_other = max(float(kl(b, n).mean()) for b, n in zip(base_other, new_other))
    kept = sum(float((b.argmax(-1) == n.argmax(-1)).float().mean()) for b, n in zip(base_other, new_other)) / len(UNRELATED)
    assert kl_edit > 1.0
    assert kl_other < 0.1 * kl_edit
    assert kept >= 0.75


def test_rome_undo_is_bit_exact_and_runs_are_deterministic(tiny_llama, tiny_tokenizer):
    from conftest import make_tiny_llama

    model = sharpen(tiny_llama)
    fp0 = model.fingerprint()
    outcome = run_rome(model)
    fp1 = model.fingerprint()
    assert fp1 != fp0
    outcome.undo(model)
    assert model.fingerprint() == fp0
    outcome.redo(model)
    assert model.fingerprint() == fp1
    # a fresh model with the same weights and seed ends with the same weights
    twin = sharpen(make_tiny_llama(tiny_tokenizer))
    run_rome(twin)
    assert twin.fingerprint() == fp1


def test_rome_statistics_cached_between_edits(tiny_llama, monkeypatch):
    import kedsl.toolkit.stats as statsmod

    model = sharpen(tiny_llama)
    run_rome(model).undo(model)
    path = statsmod.stats_path(model, 1, "model", FAST["mom2_samples"], 0)
    assert path.exists()
    mtime = path.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(statsmod, "sample_token_rows", lambda *a, **k: calls.append(1))
    outcome = run_rome(model)
    assert calls == [] and path.stat().st_mtime_ns == mtime
    assert outcome.info["stats_seconds"] < 5


def test_rome_layer_auto_edits_where_the_mlp_effect_peaks_and_caches_the_profile(tiny_llama, tmp_path, monkeypatch):
    from kedsl.toolkit import tracing
    from kedsl.toolkit.generation import generate

    monkeypatch.setenv("KEDSL_STATS_DIR", str(tmp_path))
    prompts = [("The mother tongue of Danielle Darrieux is", "Danielle Darrieux"), ("Apple was founded by Steve Jobs and", "Steve Jobs")]
    answers = generate(tiny_llama, [p for p, _ in prompts], max_new_tokens=2)
    facts = [{"subject": s, "prompt": p, "attribute": a.strip()} for (p, s), a in zip(prompts, answers)]
    monkeypatch.setattr(tracing, "known_facts", lambda: facts)
    profile = tracing.mlp_profile(tiny_llama)
    effects = profile["effects"]
    assert profile["kept"] == 2 and len(effects) == tiny_llama.num_layers
    assert profile["layer"] == max(range(len(effects)), key=effects.__getitem__)

    def no_tracing(*a, **k):
        raise AssertionError("the profile should come from the cache")

    monkeypatch.setattr(tracing, "average_trace", no_tracing)
    outcome = run_rome(tiny_llama, layer="auto")
    assert outcome.info["layer"] == profile["layer"]
    assert list(outcome.changes) == [tiny_llama.mlp_out_weight_name(profile["layer"])]


def test_rome_rejects_what_it_cannot_do(tiny_llama):
    with pytest.raises(UsageError, match="does not exist"):
        run_rome(tiny_llama, layer=9)
    from kedsl_rome.rome import ROME

    ctx = EditContext(weights=WeightJournal(tiny_llama.model), cache_dir=Path("/tmp"))
    with pytest.raises(UsageError, match="one fact at a time"):
        ROME().apply(tiny_llama, [REQUEST, REQUEST], params(), ctx)
    assert ctx.weights.touched() == []


def test_rome_spec_params_and_presets():
    spec = Registry(plugins=[kedsl_rome], entry_points=False).method("rome")
    assert spec.implementation == "kedsl_rome.rome:ROME" and not spec.supports_batch
    names = {p.name for p in spec.params}
    assert {"layer", "v_lr", "v_steps", "v_weight_decay", "kl_factor", "clamp_norm_factor", "mom2_samples",
            "mom2_update_weight", "stats_corpus", "context_count", "context_lengths", "seed", "bf16"} <= names
    models = {p.model: p for p in spec.presets}
    assert "smollm2-135m" in models and all(p.measured_by for p in models.values())
    resolved = resolve_for_model(spec, {}, MEASURED_MODELS["smollm2-135m"]).params
    assert resolved["layer"] == models["smollm2-135m"].values["layer"]
    with pytest.raises(UsageError):
        resolve_params(spec.params, {"v_lr": -1.0})


def test_rome_plugin_imports_without_torch():
    code = "import sys, kedsl_rome; kedsl_rome.register_methods(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
