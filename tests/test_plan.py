"""kedsl plan: shows resolved parameters, touched weights, what the model says and
[already], and changes nothing."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import kedsl_metrics
import kedsl_rome
from kedsl.api import plan_report
from kedsl.cli import main
from kedsl.registry import Registry


def always_says_paris(model):
    """Make a tiny LLaMA give " Paris" after every prompt: a large constant in the first
    residual dimension survives the layers and the final norm, and the LM head reads only
    that dimension, into the " Paris" row."""
    paris = model.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert len(paris) == 1, "the tiny tokenizer should have ' Paris' as one token"
    net = model.model
    with torch.no_grad():
        net.get_input_embeddings().weight[:, 0] = 1000.0
        head = net.get_output_embeddings().weight
        head.zero_()
        head[paris[0], 0] = 10.0
    return model


def script(tmp_path, model_ref="tiny"):
    p = tmp_path / "plan.ke"
    p.write_text(
        f'model "{model_ref}";\n'
        'relation located "The {} is located in the city of";\n'
        'edit "Eiffel Tower" located -> "Paris" using rome(layer=2)\n'
        '    expect locality "The Louvre is located in the city of" unchanged;\n'
        'edit "Colosseum" located -> "Berlin" using rome(layer=1, v_steps=3);\n'
    )
    return p


def check_report(report, fingerprint):
    assert report["fingerprint"] == fingerprint
    first, second = report["edits"]
    assert first["touches"] == ["model.layers.2.mlp.down_proj.weight"]
    assert second["touches"] == ["model.layers.1.mlp.down_proj.weight"]
    assert first["params"]["v_lr"] == 0.5  # no preset was measured on a model like this: the default
    assert first["preset"] is None and first["preset_reason"].startswith("no preset measured for this model (llama, 4 layers")
    assert second["params"]["v_steps"] == 3 and second["params"]["layer"] == 1
    assert first["says"].startswith(" Paris Paris")
    assert first["already"] is True and first["efficacy_now"] == 1.0
    assert second["already"] is False and second["efficacy_now"] == 0.0
    (exp,) = first["expectations"]
    assert exp["metric"] == "locality" and exp["prompts"][0]["unchanged"]
    assert exp["prompts"][0]["says"].startswith(" Paris")


def test_plan_report_changes_nothing(tiny_llama, tmp_path):
    model = always_says_paris(tiny_llama)
    before = model.fingerprint()
    registry = Registry(plugins=[kedsl_rome, kedsl_metrics], entry_points=False)
    report = plan_report(script(tmp_path), model=model, registry=registry)
    assert model.fingerprint() == before
    check_report(report, before)


def test_plan_refuses_a_layer_the_model_lacks(tiny_llama, tmp_path):
    from kedsl.errors import UsageError

    p = tmp_path / "bad.ke"
    p.write_text('model "tiny";\nrelation r "The {} is in";\nedit "Louvre" r -> "Rome" using rome(layer=9);\n')
    with pytest.raises(UsageError, match="layer 9 does not exist"):
        plan_report(p, model=tiny_llama, registry=Registry(plugins=[kedsl_rome, kedsl_metrics], entry_points=False))


def test_cli_plan_on_a_local_model(tiny_llama, tmp_path):
    from kedsl.model.saving import save_model

    model = always_says_paris(tiny_llama)
    model_dir = tmp_path / "tiny"
    save_model(model, model_dir, {})
    path = script(tmp_path, str(model_dir))
    r = CliRunner().invoke(main, ["plan", str(path), "--json"])
    assert r.exit_code == 0, r.output
    check_report(json.loads(r.stdout), model.fingerprint())
    r = CliRunner().invoke(main, ["plan", str(path)])
    assert r.exit_code == 0, r.output
    assert "'Eiffel Tower' -> 'Paris' using rome  [already]" in r.output
    assert "touches model.layers.2.mlp.down_proj.weight" in r.output
    assert "preset  no preset measured for this model (llama, 4 layers of width 64" in r.output
    assert "nothing changed" in r.output
