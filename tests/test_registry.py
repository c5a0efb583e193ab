"""The plugin registry: entry-point loading, the plugin contract, and broken plugins."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from kedsl.errors import PluginError
from kedsl.plugin import hookimpl
from kedsl.registry import Registry
from kedsl.registry.specs import MethodSpec, MetricSpec, Relation

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"


def _plugin(name: str, **hooks) -> types.ModuleType:
    """An in-process plugin module implementing the given hooks."""
    module = types.ModuleType(name)
    for hook_name, result in hooks.items():
        def impl(result=result):
            if isinstance(result, Exception):
                raise result
            return result

        impl.__name__ = hook_name
        setattr(module, hook_name, hookimpl(impl))
    return module


def _kedsl_command() -> list[str]:
    exe = VENV_BIN / "kedsl"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kedsl.cli"]


# -- built-ins through entry points ----------------------------------------------------
def test_builtins_load_through_entry_points():
    reg = Registry()
    by_name = {p.name: p for p in reg.plugins}
    relations = by_name["relations"]
    assert relations.module == "kedsl_relations"
    assert relations.distribution == "kedsl" and relations.version
    assert relations.error is None
    assert "P103" in relations.provides["relations"]
    assert reg.relation("mother_tongue").id == "P103"
    # The other built-ins come the same way, from the same distribution.
    for name in ("architectures", "metrics", "model_sources"):
        assert by_name[name].distribution == "kedsl", name


def test_in_process_registry_sees_only_the_given_plugins():
    relation = Relation(id="R1", template="{} likes", aliases=("likes",))
    reg = Registry(plugins=[_plugin("only_me", register_relations=[relation])], entry_points=False)
    assert [p.name for p in reg.plugins] == ["only_me"]
    assert reg.plugins[0].distribution is None
    assert reg.relations == {"R1": relation} and reg.relation("likes") is relation
    assert reg.methods == {} and reg.metrics == {}


# -- the plugin contract ------------------------------------------------------------------
def test_duplicate_method_names_across_plugins_raise():
    spec = MethodSpec(name="rome_like", implementation="pkg.mod:Cls")
    first = _plugin("first_methods", register_methods=[spec])
    second = _plugin("second_methods", register_methods=[MethodSpec(name="rome_like", implementation="x.y:Z")])
    with pytest.raises(PluginError) as info:
        Registry(plugins=[first, second], entry_points=False)
    assert "rome_like" in info.value.message
    assert "first_methods" in info.value.message or "second_methods" in info.value.message
    assert info.value.hint


def test_duplicate_metric_names_across_plugins_raise():
    a = _plugin("metrics_a", register_metrics=[MetricSpec(name="score", implementation="a.b:C")])
    b = _plugin("metrics_b", register_metrics=[MetricSpec(name="score", implementation="d.e:F")])
    with pytest.raises(PluginError, match="score"):
        Registry(plugins=[a, b], entry_points=False)


def test_distinct_names_across_plugins_coexist():
    a = _plugin("methods_a", register_methods=[MethodSpec(name="one", implementation="a.b:C")])
    b = _plugin("methods_b", register_methods=[MethodSpec(name="two", implementation="d.e:F")])
    reg = Registry(plugins=[a, b], entry_points=False)
    assert set(reg.methods) == {"one", "two"}
    assert {p.name: p.provides for p in reg.plugins} == {
        "methods_a": {"methods": ["one"]},
        "methods_b": {"methods": ["two"]},
    }


def test_hook_returning_the_wrong_type_names_the_plugin():
    wrong = _plugin("sloppy_plugin", register_metrics=[MethodSpec(name="oops", implementation="a.b:C")])
    with pytest.raises(PluginError) as info:
        Registry(plugins=[wrong], entry_points=False)
    assert "sloppy_plugin" in info.value.message
    assert "register_metrics" in info.value.message and "MetricSpec" in info.value.message


def test_hook_that_raises_is_recorded_on_its_plugin_and_others_still_load():
    good = _plugin("good_relations", register_relations=[Relation(id="R1", template="{} likes")])
    bad = _plugin("crashing_plugin", register_relations=RuntimeError("catalogue file missing"))
    reg = Registry(plugins=[good, bad], entry_points=False)
    assert [p.name for p in reg.failed] == ["crashing_plugin"]
    assert "catalogue file missing" in reg.failed[0].error
    assert "R1" in reg.relations


def test_later_relation_with_the_same_id_overrides():
    base = _plugin("base", register_relations=[Relation(id="P103", template="The mother tongue of {} is")])
    mine = _plugin("mine", register_relations=[Relation(id="P103", template="{} grew up speaking")])
    reg = Registry(plugins=[base, mine], entry_points=False)
    assert reg.relation("P103").template == "{} grew up speaking"


def test_unknown_method_suggests_the_closest_name():
    reg = Registry(
        plugins=[_plugin("m", register_methods=[MethodSpec(name="rome", implementation="a.b:C")])],
        entry_points=False,
    )
    with pytest.raises(PluginError) as info:
        reg.method("rme")
    assert info.value.hint == "did you mean `rome`?"


# -- the CLI, for real, in subprocesses -----------------------------------------------------
def _broken_plugin_dir(tmp_path: Path) -> Path:
    """A "installed" distribution whose plugin module raises ImportError on import."""
    info = tmp_path / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kedsl]\nbroken = broken_plugin_mod\n")
    (tmp_path / "broken_plugin_mod.py").write_text(
        'raise ImportError("broken_plugin_mod needs the package `nonexistent_dependency`")\n'
    )
    return tmp_path


def _env_with_path(extra: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra), env.get("PYTHONPATH")]))
    return env


def test_plugin_that_fails_to_import_is_reported_and_the_cli_still_works(tmp_path):
    env = _env_with_path(_broken_plugin_dir(tmp_path))
    proc = subprocess.run(_kedsl_command() + ["plugins"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    broken = [line for line in proc.stdout.splitlines() if line.startswith("broken ")]
    assert len(broken) == 1 and "FAILED" in broken[0] and "broken-plugin 0.1" in broken[0]
    assert "nonexistent_dependency" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "1 plugin(s) failed" in proc.stderr
    for builtin in ("relations", "architectures", "metrics", "model_sources"):
        line = next(line for line in proc.stdout.splitlines() if line.startswith(builtin + " "))
        assert " ok " in line and "(kedsl " in line

    # The JSON listing reports it too, and commands unrelated to it keep working.
    listing = json.loads(
        subprocess.run(
            _kedsl_command() + ["plugins", "--json"], capture_output=True, text=True, env=env, check=True
        ).stdout
    )
    failed = [p for p in listing if p["error"]]
    assert [(p["name"], p["distribution"]) for p in failed] == [("broken", "broken-plugin")]
    relations = subprocess.run(_kedsl_command() + ["relations"], capture_output=True, text=True, env=env)
    assert relations.returncode == 0 and "mother_tongue" in relations.stdout


@pytest.mark.parametrize("command", [["plugins"], ["plugins", "--json"], ["relations"]])
def test_model_free_commands_do_not_import_torch(command):
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from kedsl.cli import main\n"
        f"result = CliRunner().invoke(main, {command!r})\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print('HEAVY:' + ','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY:"


# -- docs/plugins.md: every example there is a working plugin --------------------------------
DOCS = REPO / "docs" / "plugins.md"
HOOKS = ("register_methods", "register_metrics", "register_relations", "register_model_sources", "register_architectures")


def _doc_examples() -> list[tuple[str, str]]:
    import re

    return re.findall(r"```python\n# docs-example: (\S+)\n(.*?)```", DOCS.read_text(), re.S)


@pytest.fixture
def doc_plugins(monkeypatch) -> list[types.ModuleType]:
    """Load each docs example as the module it names; return the top-level plugin modules."""
    top: list[types.ModuleType] = []
    for name, code in _doc_examples():
        module = types.ModuleType(name)
        module.__file__ = f"docs/plugins.md<{name}>"
        parent, _, child = name.rpartition(".")
        if not parent:
            module.__path__ = []  # a package, so `name.sub` can be imported from it
            top.append(module)
        monkeypatch.setitem(sys.modules, name, module)
        if parent:
            setattr(sys.modules[parent], child, module)
        exec(compile(code, module.__file__, "exec"), module.__dict__)
    return top


def test_docs_document_every_hook_with_an_example():
    text = DOCS.read_text()
    examples = "\n".join(code for _, code in _doc_examples())
    import kedsl.registry.hookspecs as hookspecs

    declared = {n for n in dir(hookspecs) if n.startswith("register_")}
    assert declared == set(HOOKS)
    for hook in HOOKS:
        assert f"## `{hook}`" in text, hook
        assert f"def {hook}()" in examples, hook


def test_docs_examples_register_through_the_registry(doc_plugins):
    reg = Registry(plugins=doc_plugins, entry_points=False)
    assert not reg.failed
    assert set(reg.methods) == {"nudge"} and set(reg.metrics) == {"target_probability"}
    assert reg.relation("height").id == "P2048"
    assert reg.model_source_for("zoo:tiny").name == "zoo"
    assert reg.architecture_for("bloom").name == "bloom"
    from kedsl.registry.params import validate_params
    from kedsl.registry.presets import MEASURED_MODELS, ModelShape, resolve_for_model

    spec = reg.method("nudge")
    assert validate_params(spec.params, {"layer": 1, "steps": 0})[0][0] == "steps"
    assert resolve_for_model(spec, {}, MEASURED_MODELS["smollm2-135m"]).params["layer"] == 8
    assert resolve_for_model(spec, {}, ModelShape("gpt2", 12, 768, 3072, 50257)).params["layer"] == 3


def test_docs_method_example_edits_and_rolls_back(doc_plugins, tiny_llama, tmp_path):
    import torch

    from kedsl.editing.outcome import EditContext
    from kedsl.editing.request import EditRequest
    from kedsl.model.journal import WeightJournal
    from kedsl.registry.params import resolve_params

    spec = Registry(plugins=doc_plugins, entry_points=False).method("nudge")
    params = resolve_params(spec.params, {"layer": 1, "steps": 5, "lr": 0.05})
    name = tiny_llama.mlp_out_weight_name(1)
    before = tiny_llama.parameter(name).detach().clone()
    context = EditContext(weights=WeightJournal(tiny_llama.model), cache_dir=tmp_path)
    request = EditRequest(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of", target="Rome")
    outcome = spec.load().apply(tiny_llama, [request], params, context)
    assert list(outcome.changes) == [name]
    losses = outcome.info["losses"]
    assert len(losses) == 5 and losses[-1] < losses[0]
    context.rollback(tiny_llama)
    assert torch.equal(tiny_llama.parameter(name), before)


def test_docs_metric_example_measures(doc_plugins, tiny_llama):
    from kedsl.evaluation.cases import EvalCase

    metric = Registry(plugins=doc_plugins, entry_points=False).metric("target_probability").load()
    cases = [
        EvalCase(subject="Toyota", target="Berlin", rewrite=[("Toyota has its headquarters in", "Berlin")] * 2),
        EvalCase(subject="Nobody", target="Paris"),
    ]
    first, empty = metric.measure(tiny_llama, cases, None)
    assert first.n == 2 and 0.0 < first.value < 1.0
    assert first.details["probabilities"][0] == pytest.approx(first.details["probabilities"][1])
    assert empty.value is None and empty.n == 0


def test_docs_model_source_example_loads_a_saved_model(doc_plugins, tiny_llama, tmp_path, monkeypatch):
    import torch

    from kedsl.errors import ModelError

    tiny_llama.model.save_pretrained(tmp_path / "tiny")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "tiny")
    monkeypatch.setenv("MODEL_ZOO", str(tmp_path))
    load = Registry(plugins=doc_plugins, entry_points=False).model_source_for("zoo:tiny").load()
    loaded = load("zoo:tiny", {})
    assert loaded.arch.name == "llama" and loaded.source == "zoo"
    ids = torch.tensor([tiny_llama.tokenizer("The Louvre is located in")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded.model(input_ids=ids).logits, tiny_llama.model(input_ids=ids).logits, atol=1e-5)
    with pytest.raises(ModelError):
        load("zoo:missing", {})


def test_docs_architecture_example_matches_a_real_bloom(doc_plugins):
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    arch = Registry(plugins=doc_plugins, entry_points=False).architecture_for("bloom")
    torch.manual_seed(0)
    model = BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=32, n_layer=2, n_head=4))
    for path in (arch.layers, arch.embed, arch.final_norm, arch.lm_head):
        model.get_submodule(path)
    for template in (arch.mlp, arch.mlp_out, arch.attn):
        model.get_submodule(template.format(1))
    out = model.get_submodule(arch.mlp_out.format(0))
    assert isinstance(out, torch.nn.Linear) and out.in_features == 4 * 32  # (out, in): not transposed
