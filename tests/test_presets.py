"""Presets per model: a model gets the preset measured on a model of its shape, else the
method's depth-relative defaults with a warning; `plan` says which and why."""
from __future__ import annotations

import logging

import pytest

from kedsl.registry import Registry
from kedsl.registry.presets import MEASURED_MODELS, Depth, ModelShape, Preset, params_for, resolve_for_model
from kedsl.registry.specs import MethodSpec

SMOL = MEASURED_MODELS["smollm2-135m"]
GEMMA = MEASURED_MODELS["gemma3-270m"]
QWEN = MEASURED_MODELS["qwen2.5-coder-0.5b"]


def test_a_model_of_the_presets_shape_gets_it_and_the_reason_names_the_model():
    rome = Registry().method("rome")
    mine = resolve_for_model(rome, {}, SMOL, "smollm2-135m")
    assert mine.preset is not None and mine.preset.model == "smollm2-135m"
    assert mine.reason == "preset measured on smollm2-135m" and mine.warning is None
    assert mine.params["layer"] == 6 and mine.params["v_lr"] == 5.0
    # the same shape loaded another way (a hub id, a saved copy): the preset, and why
    other = resolve_for_model(rome, {}, SMOL, None)
    assert other.params == mine.params and "same shape" in other.reason


def test_a_model_without_a_preset_gets_depth_relative_defaults_and_a_warning(caplog):
    # AlphaEdit has presets for SmolLM2 and Gemma 3, none for Qwen2.5's shape
    alphaedit = Registry().method("alphaedit")
    assert {p.model for p in alphaedit.presets} >= {"smollm2-135m", "gemma3-270m"}
    assert not any(p.shape == QWEN for p in alphaedit.presets)
    got = resolve_for_model(alphaedit, {}, QWEN, "qwen2.5-coder-0.5b")
    assert got.preset is None and got.params["layers"] == [2, 3, 4, 5, 6]  # 0.07..0.27 of 24 layers
    assert "depth-relative" in got.reason and "qwen2, 24 layers" in got.warning
    # and the measured model gets its own
    assert resolve_for_model(alphaedit, {}, GEMMA, "gemma3-270m").params["layers"] == [2]


def test_depth_fallback_on_an_unmeasured_shape_and_given_layers_silence_it(caplog):
    shape = ModelShape("mistral", 32, 4096, 14336, 32000)
    spec = Registry().method("rome")
    got = resolve_for_model(spec, {}, shape)
    assert got.preset is None and got.params["layer"] == round(0.2 * 32)
    assert got.warning and "using depth-relative defaults (layer 6)" in got.warning
    assert resolve_for_model(spec, {"layer": 9}, shape).warning is None

    class Model:
        name = None

    m = Model()
    m.shape = shape
    with caplog.at_level(logging.WARNING, logger="kedsl.registry.presets"):
        params_for(spec, {}, m)
        params_for(spec, {}, m)
    assert sum("no preset was measured" in r.message for r in caplog.records) <= 1  # once per method and shape


def test_depth_rules_cover_the_whole_range_of_depths():
    assert Depth("layer", 0.2).value(30) == 6 and Depth("layer", 0.99).value(4) == 3 and Depth("layer", 0.0).value(4) == 0
    assert Depth("layers", 0.07, 0.27).value(30) == [2, 3, 4, 5, 6, 7, 8]
    assert Depth("layers", 0.07, 0.27).value(2) == [0, 1]


@pytest.mark.parametrize("name", sorted(set(Registry().methods) - {"gradient_step"}))
def test_built_in_presets_are_measured_and_depth_rules_reproduce_the_smollm2_layers(name):
    spec = Registry().method(name)
    for p in spec.presets:
        assert p.model in MEASURED_MODELS and len(p.measured_by) > 40, (name, p.model)
    smol = next((p for p in spec.presets if p.model == "smollm2-135m"), None)
    for d in spec.depth_defaults:
        if smol is not None and d.param in smol.values:
            assert d.value(SMOL.layers) == smol.values[d.param], (name, d)


def test_presets_are_checked_when_the_spec_is_made():
    base = Registry().method("rome")
    with pytest.raises(ValueError, match="same model shape"):
        MethodSpec(name="x", implementation="m:X", params=base.params,
                   presets=(Preset("smollm2-135m", {"layer": 1}, "a"), Preset("other", {"layer": 2}, "b", shape=SMOL)))  # fmt: skip
    with pytest.raises(ValueError, match="undeclared parameter `layerz`"):
        MethodSpec(name="x", implementation="m:X", params=base.params, depth_defaults=(Depth("layerz", 0.5),))
    with pytest.raises(ValueError, match="give its shape"):
        Preset("my-model", {"layer": 1})
