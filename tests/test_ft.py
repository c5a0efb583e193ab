"""FT-L and FT-M (plugins/kedsl_ft) on tiny in-process models."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import kedsl_ft
from kedsl.editing.outcome import EditContext
from kedsl.editing.request import EditRequest
from kedsl.model.journal import WeightJournal
from kedsl.registry.params import resolve_params
from kedsl.registry import Registry
from kedsl.toolkit.scoring import teacher_forced

REQUEST = EditRequest(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux", target="French")


def sharpen(model):
    with torch.no_grad():
        model.model.get_output_embeddings().weight.mul_(20)
    return model


def run(model, method: str, **over):
    from kedsl_ft.ft import FTL, FTM

    spec = {"ft_l": kedsl_ft.FT_L_SPEC, "ft_m": kedsl_ft.FT_M_SPEC}[method]
    params = resolve_params(spec.params, {"layer": 1, **over})
    ctx = EditContext(weights=WeightJournal(model.model), cache_dir=Path("/tmp"), seed=0)
    impl = {"ft_l": FTL, "ft_m": FTM}[method]()
    return impl.apply(model, [REQUEST], params, ctx)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_ft_m_makes_the_target_the_argmax_by_changing_one_weight(fixture, request):
    model = sharpen(request.getfixturevalue(fixture))
    assert teacher_forced(model, [(REQUEST.prompt, REQUEST.target)])[0].accuracy < 1.0
    before = snapshot(model)
    fp = model.fingerprint()
    outcome = run(model, "ft_m", lr=1e-2, steps=50)
    score = teacher_forced(model, [(REQUEST.prompt, REQUEST.target)])[0]
    assert score.predicted == score.target_ids
    name = model.mlp_out_weight_name(1)
    assert list(outcome.changes) == [name]
    after = snapshot(model)
    assert [k for k in before if not torch.equal(before[k], after[k])] == [name]
    assert all(p.requires_grad for p in model.model.parameters())  # flags restored
    outcome.undo(model)
    assert model.fingerprint() == fp
    outcome.redo(model)
    assert teacher_forced(model, [(REQUEST.prompt, REQUEST.target)])[0].predicted == score.target_ids


def test_ft_l_keeps_the_change_within_the_linf_bound(tiny_llama):
    model = sharpen(tiny_llama)
    fp = model.fingerprint()
    outcome = run(model, "ft_l", lr=1e-2, steps=20, norm_constraint=1e-3)
    delta = outcome.changes[model.mlp_out_weight_name(1)].delta
    assert delta.abs().max() <= 1e-3 + 1e-7
    assert delta.abs().max() > 0
    outcome.undo(model)
    assert model.fingerprint() == fp


def test_ft_m_bounds_an_erasure_but_not_an_edit(tiny_llama):
    import dataclasses

    model = sharpen(tiny_llama)
    name = model.mlp_out_weight_name(1)
    edit = run(model, "ft_m", lr=1e-2, steps=20)
    edit.undo(model)
    assert edit.changes[name].delta.abs().max() > 5e-3 and edit.info["norm_bound"] == 0
    erase = dataclasses.replace(REQUEST, kind="erase", target="I don't know.", old="French")
    from kedsl_ft.ft import FTM

    spec = kedsl_ft.FT_M_SPEC
    ctx = EditContext(weights=WeightJournal(model.model), cache_dir=Path("/tmp"), seed=0)
    outcome = FTM().apply(model, [erase], resolve_params(spec.params, {"layer": 1, "lr": 1e-2, "steps": 20}), ctx)
    delta = outcome.changes[name].delta
    assert outcome.info["norm_bound"] == 5e-3 and 0 < delta.abs().max() <= 5e-3 + 1e-7


def test_ft_l_unconstrained_learns_the_target(tiny_llama):
    model = sharpen(tiny_llama)
    before = teacher_forced(model, [(REQUEST.prompt, REQUEST.target)])[0].logprob
    run(model, "ft_l", lr=1e-2, steps=30, norm_constraint=0.0)
    after = teacher_forced(model, [(REQUEST.prompt, REQUEST.target)])[0]
    assert after.logprob > before


def test_ft_l_is_constrained_and_ft_m_is_not():
    from kedsl.registry.presets import MEASURED_MODELS, resolve_for_model

    registry = Registry(plugins=[kedsl_ft], entry_points=False)
    resolved = {
        name: resolve_for_model(registry.method(name), {}, MEASURED_MODELS["smollm2-135m"]).params
        for name in ("ft_l", "ft_m")
    }
    assert resolved["ft_l"]["norm_constraint"] > 0  # the L-infinity ball is what makes it FT-L
    assert resolved["ft_m"]["norm_constraint"] == 0


def test_failed_expectation_leaves_no_trace(tiny_llama, tmp_path):
    import kedsl_metrics
    from kedsl.executor import Executor, PlannedEdit
    from kedsl.lang import ast

    model = sharpen(tiny_llama)
    before = model.fingerprint()
    registry = Registry(plugins=[kedsl_ft, kedsl_metrics], entry_points=False)
    ex = Executor(model, registry, cache_dir=tmp_path, says_now_tokens=0)
    impossible = ast.Expect("efficacy", op=">", threshold=1.0)
    (r,) = ex.run([PlannedEdit(REQUEST, "ft_m", {"layer": 1, "lr": 1e-2, "steps": 10}, [impossible])])
    assert r.status == "rolled_back" and not r.passed
    assert model.fingerprint() == before


@pytest.mark.parametrize("method", ["ft_l", "ft_m"])
def test_replaying_the_layers_below_trains_the_same_weight_as_running_them(method, tiny_llama, tiny_tokenizer, monkeypatch):
    """FT records the outputs of the layers below the trained one once and replays them at
    every step; that must give the weight a full forward at every step gives."""
    import contextlib

    from conftest import make_tiny_llama, method_params

    from kedsl.editing.outcome import EditContext
    from kedsl.model.journal import WeightJournal
    from kedsl.plugin.testing import REQUESTS
    from kedsl_ft import ft

    params = method_params(kedsl_ft, method, {"layer": 2, "steps": 6, "lr": 1e-3})
    requests = [REQUESTS["edit"], REQUESTS["insert"]]
    trained = []
    for replay in (True, False):
        if not replay:
            monkeypatch.setattr(ft, "replaying", lambda layers, outs: contextlib.nullcontext())
        model = make_tiny_llama(tiny_tokenizer)
        ctx = EditContext(weights=WeightJournal(model.model), cache_dir=Path("/tmp"))
        cls = ft.FTL if method == "ft_l" else ft.FTM
        out = cls().apply(model, requests, params, ctx)
        trained.append((model.mlp_out(2).weight.detach().clone(), out.info["loss_end"]))
    torch.testing.assert_close(trained[0][0], trained[1][0], atol=1e-6, rtol=1e-5)
    assert trained[0][1] == pytest.approx(trained[1][1], rel=1e-5)
