"""bf16 autocast is used only where the CPU multiplies bf16 natively (kedsl.toolkit.precision)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kedsl.toolkit import precision


@pytest.fixture(autouse=True)
def fresh_detection():
    precision.bf16_is_fast.cache_clear()
    yield
    precision.bf16_is_fast.cache_clear()


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False), ("true", True), ("off", False)])
def test_environment_overrides_the_detection(monkeypatch, value, expected):
    monkeypatch.setenv("KEDSL_BF16", value)
    assert precision.bf16_is_fast() is expected
    assert precision.resolve_bf16(None) is expected
    assert precision.resolve_bf16(not expected) is (not expected)  # an explicit choice wins


def test_detection_reads_the_cpu_flags(monkeypatch, tmp_path):
    monkeypatch.delenv("KEDSL_BF16", raising=False)
    fake = tmp_path / "cpuinfo"
    real_path = precision.Path

    def with_flags(flags: str):
        fake.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(precision, "Path", lambda p: fake if p == "/proc/cpuinfo" else real_path(p))
        precision.bf16_is_fast.cache_clear()
        return precision.bf16_is_fast()

    assert with_flags("fpu sse avx2 fma") is False
    assert with_flags("fpu avx2 avx512f avx512_bf16") is True
    assert with_flags("fpu avx2 amx_tile amx_bf16") is True


def test_method_defaults_are_auto():
    import kedsl_alphaedit
    import kedsl_memit
    import kedsl_rome

    for module in (kedsl_rome, kedsl_memit, kedsl_alphaedit):
        param = next(p for p in module.PARAMS if p.name == "bf16")
        assert param.default is None, module.__name__


def test_linear_weights_as_gives_autocast_the_same_numbers_and_puts_the_weights_back(tiny_llama):
    import torch

    from kedsl.toolkit.precision import linear_weights_as

    net = tiny_llama.model
    ids = torch.tensor([[5, 9, 13, 7, 21]])
    before = {n: p for n, p in net.named_parameters()}
    tied = net.get_output_embeddings().weight is net.get_input_embeddings().weight
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = net(input_ids=ids).logits
        with linear_weights_as(net, torch.bfloat16):
            assert all(m.weight.dtype == torch.bfloat16 for m in net.modules() if isinstance(m, torch.nn.Linear))
            got = net(input_ids=ids).logits
    assert torch.equal(got, ref)  # autocast casts to the same bf16 values
    after = {n: p for n, p in net.named_parameters()}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert all(p.dtype == torch.float32 for p in after.values())
    assert (net.get_output_embeddings().weight is net.get_input_embeddings().weight) == tied


def test_float32_master_keeps_steps_a_bf16_weight_would_round_away():
    from kedsl.toolkit.precision import float32_master

    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 8, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    param = lin.weight
    x = torch.ones(1, 8, dtype=torch.bfloat16)
    with float32_master(lin) as w:
        assert w.dtype == torch.float32 and w is not param
        opt = torch.optim.SGD([w], lr=1e-4)  # each step moves a weight of 1.0 by 1e-4, far below its bf16 rounding
        for _ in range(20):
            opt.zero_grad()
            lin(x).sum().backward()
            opt.step()
        assert lin(x).dtype == torch.bfloat16
    assert lin.weight is param and param.dtype == torch.bfloat16 and bool((param == 1.0).all())  # untouched
    moved = float(1.0 - w.detach().mean())
    assert moved == pytest.approx(20 * 1e-4, rel=1e-2)
    direct = torch.ones(8, 8, dtype=torch.bfloat16) - 1e-4  # one direct bf16 step rounds back to 1.0
    assert bool((direct == 1.0).all())
    fp32 = torch.nn.Linear(4, 4)
    with float32_master(fp32) as same:
        assert same is fp32.weight  # float32: trained in place, nothing wrapped


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_ft_m_edits_a_reduced_precision_model_as_well_as_float32(tiny_tokenizer, dtype):
    """The edited weight is scaled up so that FT-M's Adam steps (lr 1e-3) fall below its
    bf16 rounding: trained in place, bf16 gains ~20% less log-probability than float32."""
    import kedsl_ft
    from conftest import method_params, sharpen
    from kedsl_ft.ft import FTM

    from kedsl.editing.outcome import EditContext
    from kedsl.model.journal import WeightJournal
    from kedsl.plugin.testing import REQUESTS, tiny_llama
    from kedsl.toolkit.scoring import teacher_forced

    req = REQUESTS["edit"]
    params = method_params(kedsl_ft, "ft_m", {"layer": 2, "steps": 15, "lr": 1e-3, "norm_constraint": 0.0})
    gain = {}
    for dt in ("float32", dtype):
        m = sharpen(tiny_llama(tiny_tokenizer, dtype=getattr(torch, dt)))
        with torch.no_grad():
            m.mlp_out(2).weight.mul_(30)
        (before,) = teacher_forced(m, [(req.prompt, req.target)])
        ctx = EditContext(weights=WeightJournal(m.model), cache_dir=Path("/tmp"))
        FTM().apply(m, [req], params, ctx)
        assert m.mlp_out(2).weight.dtype == getattr(torch, dt)
        (after,) = teacher_forced(m, [(req.prompt, req.target)])
        gain[dt] = after.mean_logprob - before.mean_logprob
        ctx.rollback(m)
    assert gain["float32"] > 2.0  # the edit took
    assert gain[dtype] == pytest.approx(gain["float32"], rel=0.1), gain
