"""The conformance kit (kedsl.plugin.testing): every built-in method passes it, and each
kind of contract violation makes exactly the check that looks for it fail."""
from __future__ import annotations

import random
import types
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from conftest import REPO, STATS_CORPUS

from kedsl.plugin import Attachment, MethodConfig, MethodSpec, Param, UsageError, hookimpl, param
from kedsl.plugin.testing import check_method
from kedsl.registry import Registry

_SEARCH = {"mom2_samples": 1500, "stats_corpus": STATS_CORPUS, "context_count": 2, "context_lengths": [4], "v_steps": 10, "bf16": False}
#: Settings that make each built-in fast on the kit's 4-layer model.
BUILT_IN = {
    "rome": {"layer": 1, "v_weight_decay": 0.0, "clamp_norm_factor": 1e4, **_SEARCH},
    "memit": {"layers": [1, 2], "v_weight_decay": 0.0, "clamp_norm_factor": 1e4, **_SEARCH},
    "alphaedit": {"layers": [1, 2], "null_space_threshold": 0.05, "l2": 1e-3, "v_weight_decay": 0.0, "clamp_norm_factor": 1e4, **_SEARCH},
    "ft_l": {"layer": 1, "steps": 5},
    "ft_m": {"layer": 1, "steps": 5},
    "lora": {"layers": [1, 2], "lr": 1e-2, "steps": 5},
    "adalora": {"layers": [1, 2], "lr": 1e-2, "steps": 5},
    "ike": {"layer": 1},
    "grace": {"layer": 2, "steps": 10},
    "ultraedit": {"layers": [1, 2], "lr": 0.01, "steps": 3, "ridge": 0.01},
    "wise": {"layer": 2, "steps": 20, "unrelated": 4},
}


#: Trained methods pass the kit in their own tests, once a tiny editor has been trained.
TRAINED = {"mend": "tests/test_mend.py", "serac": "tests/test_serac.py"}


def test_every_built_in_method_is_covered():
    assert set(BUILT_IN) | set(TRAINED) == set(Registry().methods) - {"gradient_step"}  # the example plugin's own test
    for test in TRAINED.values():
        assert "check_method(" in (REPO / test).read_text(encoding="utf-8"), test


@pytest.mark.parametrize("method", sorted(BUILT_IN))
def test_built_in_method_conforms(method, tmp_path):
    report = check_method(method, params=BUILT_IN[method], workdir=tmp_path)
    report.assert_ok()
    assert [c.name for c in report.checks] == ["params", "undo", "determinism", "round_trip", "kinds"]


#: Architectures beyond LLaMA, and reduced precision: every built-in on tiny Gemma 3 (four
#: norms, scaled tied embeddings, sliding windows); Qwen2 (the LLaMA layout with biases and
#: tied embeddings) and bfloat16/float16 for the methods that search and solve weights.
_ARCHS = [("gemma3", "float32", m) for m in sorted(BUILT_IN)] + [
    (arch, dtype, m)
    for arch, dtype in (("qwen2", "float32"), ("gemma3", "bfloat16"), ("qwen2", "float16"))
    for m in ("rome", "memit", "ft_m")
]


@pytest.mark.parametrize("arch, dtype, method", _ARCHS)
def test_built_in_method_conforms_on_other_architectures_and_dtypes(arch, dtype, method, tmp_path, tiny_tokenizer):
    from kedsl.plugin import testing

    factory = getattr(testing, f"tiny_{arch}")
    report = check_method(method, params=BUILT_IN[method], workdir=tmp_path,
                          model_factory=lambda: factory(tiny_tokenizer, dtype=getattr(torch, dtype)))  # fmt: skip
    report.assert_ok()


def test_the_example_plugins_method_conforms(tmp_path):
    import runpy

    test = runpy.run_path(str(REPO / "examples" / "kedsl-example-plugin" / "tests" / "test_gradient_step_conforms.py"))
    test["test_gradient_step_conforms"](tmp_path)


# -- methods that break the contract, one way each ------------------------------------------------
class _Base:
    def _layer_weight(self, model, params):
        return model.mlp_out_weight_name(params["layer"])


class Honest(_Base):
    """Adds a fixed delta through the journal: conforms (the control)."""

    def apply(self, model, requests, params, context):
        name = self._layer_weight(model, params)
        context.weights.add_(name, torch.full_like(model.parameter(name), 0.01))
        return context.outcome()


class Sneaky(_Base):
    """Also writes a weight behind the journal's back."""

    def apply(self, model, requests, params, context):
        name = self._layer_weight(model, params)
        context.weights.add_(name, torch.full_like(model.parameter(name), 0.01))
        with torch.no_grad():
            model.mlp_out(0).weight.add_(0.01)
        return context.outcome()


class Idle(_Base):
    """Changes nothing."""

    def apply(self, model, requests, params, context):
        return context.outcome()


class Noisy(_Base):
    """Draws from a generator the run's seed does not control."""

    def apply(self, model, requests, params, context):
        name = self._layer_weight(model, params)
        context.weights.add_(name, torch.full_like(model.parameter(name), random.SystemRandom().random()))
        return context.outcome()


class Overclaiming(Honest):
    """Declares `insert` but refuses it."""

    def apply(self, model, requests, params, context):
        if any(r.kind == "insert" for r in requests):
            raise UsageError("cannot insert after all")
        return super().apply(model, requests, params, context)


class Forgetful(_Base):
    """Its attachment saves nothing of what it adds: the round trip loses the edit."""

    def apply(self, model, requests, params, context):
        context.attach(model, BiasAttachment(params["layer"], torch.full((model.hidden_size,), 3.0)))
        return context.outcome()


class BiasAttachment(Attachment):
    kind = "bias"
    method = "forgetful"

    def __init__(self, layer: int, bias: torch.Tensor):
        self.layer, self.bias, self.handle = layer, bias, None

    def attach(self, model):
        self.handle = model.mlp_out(self.layer).register_forward_hook(lambda m, a, out: out + self.bias)

    def detach(self, model):
        self.handle.remove()

    def state(self):
        return {}, {"layer": self.layer, "size": int(self.bias.numel())}  # the bias itself is forgotten

    @classmethod
    def from_state(cls, tensors, config):
        return cls(config["layer"], torch.zeros(config["size"]))


@dataclass
class LayerConfig(MethodConfig):
    method: ClassVar[str] = "test"
    layer: int = param(1, "layer", min=0)


def _plugin(name: str, impl: str, **spec) -> types.SimpleNamespace:
    @hookimpl
    def register_methods():
        fields = {"config": LayerConfig, **spec}
        return [MethodSpec(name=name, implementation=f"tests.test_conformance:{impl}", **fields)]

    return types.SimpleNamespace(register_methods=register_methods, __name__=f"plugin_{name}")


def _failed(report) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.passed}


def _check(name, impl, tmp_path, **spec):
    return check_method(name, plugins=[_plugin(name, impl, **spec)], workdir=tmp_path)


def test_an_honest_method_conforms(tmp_path):
    assert _check("honest", "Honest", tmp_path).ok


def test_a_change_behind_the_journals_back_fails_undo(tmp_path):
    failed = _failed(_check("sneaky", "Sneaky", tmp_path))
    assert "outside context.weights" in failed["undo"] and "model.layers.0.mlp.down_proj.weight" in failed["undo"]


def test_an_edit_that_changes_nothing_fails_undo(tmp_path):
    assert "changed nothing" in _failed(_check("idle", "Idle", tmp_path))["undo"]


def test_an_unseeded_random_draw_fails_determinism(tmp_path):
    failed = _failed(_check("noisy", "Noisy", tmp_path))
    assert set(failed) == {"determinism"} and "different weights" in failed["determinism"]


def test_a_declared_kind_the_method_refuses_fails_kinds(tmp_path):
    failed = _failed(_check("overclaiming", "Overclaiming", tmp_path, kinds=("edit", "insert")))
    assert set(failed) == {"kinds"} and "refused `insert`" in failed["kinds"]


def test_an_attachment_that_does_not_save_its_content_fails_the_round_trip(tmp_path):
    failed = _failed(_check("forgetful", "Forgetful", tmp_path, attachments=(("bias", "tests.test_conformance:BiasAttachment"),)))
    assert set(failed) == {"round_trip"} and "scores the edit prompt differently" in failed["round_trip"]


def test_a_parameter_whose_default_check_rejects_fails_params(tmp_path):
    spec = {"config": None, "params": (Param("layer", "int", 1, min=0), Param("steps", "int", 0, doc="steps", min=1))}
    failed = _failed(_check("bad_default", "Honest", tmp_path, **spec))
    assert "default of `steps` is invalid" in failed["params"]
    assert "must be >= 1" in failed["undo"]  # and no edit can run with it

