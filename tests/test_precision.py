"""bf16 autocast is used only where the CPU multiplies bf16 natively (kedsl.toolkit.precision)."""
from __future__ import annotations

import pytest

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
