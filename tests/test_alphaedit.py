"""AlphaEdit (plugins/kedsl_alphaedit) on tiny in-process LLaMA and GPT-2 models: the
update stays in the null space of the preserved keys, edits land, the accumulated-key
state grows with the sequence, rolls back with a failed edit and survives save/reload."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import STATS_CORPUS, check_state_lifecycle, method_params, sharpen

import kedsl_alphaedit
from kedsl.editing.outcome import EditContext
from kedsl.editing.request import EditRequest
from kedsl.model.journal import WeightJournal
from kedsl.toolkit.scoring import teacher_forced

REQUESTS = [
    EditRequest(subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux", target="French"),
    EditRequest(subject="Toyota", prompt="The headquarters of Toyota", target="Paris"),
]
FAST = {
    "layers": [1, 2],
    "mom2_samples": 1500,
    "stats_corpus": STATS_CORPUS,
    "null_space_threshold": 0.05,
    "l2": 1e-3,
    "context_count": 2,
    "context_lengths": [4],
    "v_steps": 30,
    "v_lr": 0.5,
    "v_weight_decay": 0.0,
    "clamp_norm_factor": 1e4,
    "bf16": False,
    "v_batch": 0,
}



def params(**over):
    return method_params(kedsl_alphaedit, "alphaedit", FAST, **over)


def run(model, requests=REQUESTS, state=None, **over):
    from kedsl_alphaedit.alphaedit import AlphaEdit

    ctx = EditContext(weights=WeightJournal(model.model), cache_dir=Path("/tmp"), seed=0, state=state if state is not None else {})
    return AlphaEdit().apply(model, list(requests), params(**over), ctx), ctx


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_update_is_orthogonal_to_the_preserved_keys(fixture, request):
    from kedsl.toolkit.stats import second_moment
    from kedsl_alphaedit.alphaedit import null_space_projection

    model = sharpen(request.getfixturevalue(fixture))
    outcome, _ = run(model)
    mom2 = second_moment(model, 1, STATS_CORPUS, FAST["mom2_samples"], 0).double()
    evals, evecs = torch.linalg.eigh((mom2 + mom2.T) / 2)
    preserved = evecs[:, evals >= FAST["null_space_threshold"] * evals.max()]  # the keys' main directions
    assert 0 < preserved.shape[1] < mom2.shape[0]
    delta = outcome.changes[model.mlp_out_weight_name(1)].delta.double()
    dw = delta.T if model.arch.transposed else delta  # (d_out, d_in)
    assert float(dw.norm()) > 0
    # ΔW maps every preserved direction to (almost) nothing
    assert float((dw @ preserved).norm()) < 1e-4 * float(dw.norm())
    p, dims = null_space_projection(mom2, FAST["null_space_threshold"])
    assert dims == mom2.shape[0] - preserved.shape[1]
    torch.testing.assert_close(p @ p, p, atol=1e-10, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_edits_land_and_the_state_accumulates_keys(fixture, request):
    model = sharpen(request.getfixturevalue(fixture))
    pairs = [(r.prompt, r.target) for r in REQUESTS]
    assert not all(s.predicted == s.target_ids for s in teacher_forced(model, pairs))
    state: dict = {}
    run(model, REQUESTS[:1], state)
    first = {k: v.clone() for k, v in state.items()}
    assert sorted(first) == ["cache.1", "cache.2"]
    run(model, REQUESTS[1:], state)
    for s in teacher_forced(model, pairs):  # the second edit did not undo the first
        assert s.predicted == s.target_ids
    for k in first:  # K_p K_pᵀ grew by the second edit's K Kᵀ (positive semi-definite)
        added = (state[k] - first[k]).double()
        assert float(added.norm()) > 0
        assert float(torch.linalg.eigvalsh((added + added.T) / 2).min()) > -1e-4 * float(added.norm())


def test_update_solves_its_projected_system():
    from kedsl_alphaedit.alphaedit import projected_update

    g = torch.Generator().manual_seed(0)
    d_in, d_out, n = 12, 7, 3
    u, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=torch.float64))
    p = u[:, :8] @ u[:, :8].T
    k = torch.randn(d_in, n, generator=g, dtype=torch.float64)
    r = torch.randn(d_out, n, generator=g, dtype=torch.float64)
    kp = torch.randn(d_in, 4, generator=g, dtype=torch.float64)
    dw = projected_update(k, r, p, kp @ kp.T, 0.5)
    lhs = (p @ (kp @ kp.T + k @ k.T) + 0.5 * torch.eye(d_in, dtype=torch.float64)) @ dw.T
    torch.testing.assert_close(lhs, p @ k @ r.T, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(dw @ u[:, 8:], torch.zeros(d_out, d_in - 8, dtype=torch.float64), atol=1e-10, rtol=0)

    # the weight on earlier edits' keys enters the system as written, and a larger one
    # moves the outputs of those keys less
    dw3 = projected_update(k, r, p, kp @ kp.T, 0.5, earlier_weight=3.0)
    lhs3 = (p @ (3.0 * kp @ kp.T + k @ k.T) + 0.5 * torch.eye(d_in, dtype=torch.float64)) @ dw3.T
    torch.testing.assert_close(lhs3, p @ k @ r.T, atol=1e-10, rtol=1e-10)
    assert (dw3 @ kp).norm() < (dw @ kp).norm()


def test_state_is_saved_with_the_model_restored_on_reload_and_rolled_back_on_failure(tiny_tokenizer, tmp_path):
    first, last = check_state_lifecycle(kedsl_alphaedit, "alphaedit", FAST, tiny_tokenizer, tmp_path)
    assert sorted(first) == ["cache.1", "cache.2"]
    for k, v in first.items():  # the kept second edit added its keys to the accumulated ones
        assert float((last[k] - v).norm()) > 0


def test_descriptor_module_imports_without_torch():
    import subprocess
    import sys

    code = "import sys; sys.modules['torch'] = None; import kedsl_alphaedit; print(kedsl_alphaedit.register_methods()[0].name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "alphaedit"
