"""The checker against an in-process registry of fake plugins (no dependency on the
built-in plugins, which may change)."""
from __future__ import annotations

import types
from pathlib import Path

import pytest

from kedsl.plugin import hookimpl
from kedsl.lang import ResolvedEdit, ScriptError, check_source, parse, resolve_edits
from kedsl.registry.params import Param
from kedsl.registry import Registry
from kedsl.registry.specs import CHANGE_KINDS as ALL_KINDS
from kedsl.registry.specs import MethodSpec, MetricSpec, Relation


def _fake_plugin() -> types.ModuleType:
    mod = types.ModuleType("fake_lang_plugin")

    @hookimpl
    def register_methods():
        return [
            MethodSpec("rome", "x:Y", params=(
                Param("layer", "int", 5, min=0, max=47),
                Param("v_lr", "float", 0.5, min=0.0),
            ), kinds=ALL_KINDS),
            MethodSpec("memit", "x:Y", params=(Param("layers", "layers", [4, 5], min=0, max=47),),
                       supports_batch=True, kinds=ALL_KINDS),
            MethodSpec("ft_m", "x:Y", params=(Param("steps", "int", 25, min=1),), kinds=ALL_KINDS),
            MethodSpec("solo", "x:Y", supports_batch=False),  # edits only (the default kinds)
        ]

    @hookimpl
    def register_metrics():
        return [
            MetricSpec("efficacy", "x:Y", default_threshold=0.5),
            MetricSpec("generalization", "x:Y", default_threshold=0.5),
            MetricSpec("locality", "x:Y", prompt_form="unchanged", needs_baseline=True),
            MetricSpec("portability", "x:Y"),
            MetricSpec("fluency", "x:Y", prompt_form="none", relative_tolerance=0.05),
        ]

    @hookimpl
    def register_relations():
        return [
            Relation("P103", "The mother tongue of {} is", ("{}'s native language is",), ("mother_tongue",)),
            Relation("P159", "The headquarters of {} is in", (), ("headquarters",)),
            Relation("P112", "{} was founded by", (), ("founded_by",)),
            Relation("P17", "{} is located in the country of", (), ("country",)),
        ]

    mod.register_methods = register_methods
    mod.register_metrics = register_metrics
    mod.register_relations = register_relations
    return mod


def fake_registry() -> Registry:
    return Registry(plugins=[_fake_plugin()], entry_points=False)


REG = fake_registry()
TOUR = (Path(__file__).resolve().parent.parent / "examples" / "language_tour.ke").read_text()


def diags_of(src: str, tmp_path: Path | None = None):
    script, diags = check_source(src, "t.ke", REG, base_dir=tmp_path)
    assert script is not None, [d.message for d in diags]
    return [(d.code, d.line, d.col) for d in diags]


def codes(src: str, tmp_path: Path | None = None) -> list[str]:
    return [c for c, _, _ in diags_of(src, tmp_path)]


HEAD = 'model "m";\n'


def test_language_tour_checks_cleanly(tmp_path):
    script, diags = check_source(TOUR, "tour.ke", REG, base_dir=tmp_path)
    assert diags == []
    assert len(script.edits()) == 5


def test_eiffel_example_checks_cleanly(tmp_path):
    src = (Path(__file__).resolve().parent.parent / "examples" / "eiffel.ke").read_text()
    script, diags = check_source(src, "eiffel.ke", REG, base_dir=tmp_path)
    assert diags == []


def test_unknown_names_with_suggestions():
    src = HEAD + 'edit "S" mother_tonge -> "T" using rme(layr=3) expect eficacy;\n'
    _, diags = check_source(src, "t.ke", REG)
    by_code = {d.code: d for d in diags}
    assert by_code["unknown-relation"].hint == "did you mean `mother_tongue`?"
    assert (by_code["unknown-relation"].line, by_code["unknown-relation"].col) == (2, 10)
    assert by_code["unknown-method"].hint == "did you mean `rome`?"
    assert by_code["unknown-metric"].hint == "did you mean `efficacy`?"
    # parameters of an unknown method cannot be checked: no unknown-parameter here
    assert "unknown-parameter" not in by_code


def test_parameter_problems():
    src = HEAD + 'edit "S" P103 -> "T" using rome(layr=3, v_lr="fast");\nedit "A" P103 -> "B" using rome(layer=48);\n'
    _, diags = check_source(src, "t.ke", REG)
    got = [(d.code, d.line, d.col, d.message) for d in diags]
    assert got[0][:3] == ("unknown-parameter", 2, 33) and "layr" in got[0][3]
    assert diags[0].hint == "did you mean `layer`?"
    assert got[1][:3] == ("bad-parameter", 2, 41) and "expects a number" in got[1][3]
    assert got[2][:3] == ("bad-parameter", 3, 33) and "<= 47" in got[2][3]


def test_layers_accept_range_and_int():
    assert codes(HEAD + 'edit "S" P103 -> "T" using memit(layers=3..7);\nedit "A" P103 -> "B" using memit(layers=4);\n') == []
    assert codes(HEAD + 'edit "S" P103 -> "T" using memit(layers=40..50);\n') == ["bad-parameter"]


def test_relation_resolution_prefers_script_and_accepts_alias(tmp_path):
    src = HEAD + 'relation P103 "{} speaks";\nedit "S" P103 -> "T" using rome;\nedit "S2" headquarters -> "X" using rome;\n'
    script = parse(src)
    resolved = resolve_edits(script, REG, tmp_path)
    assert [r.prompt for r in resolved] == ["S speaks", "The headquarters of S2 is in"]
    assert resolved[0].relation_id == "P103" and resolved[0].paraphrases == []
    assert resolved[1].relation_id == "P159"


def test_resolve_edits_inherits_methods_and_policy(tmp_path):
    script = parse(TOUR)
    resolved = resolve_edits(script, REG, tmp_path)
    assert all(isinstance(r, ResolvedEdit) for r in resolved)
    assert [(r.method, r.batch) for r in resolved] == [
        ("rome", None), ("memit", None), ("ft_m", None), ("memit", 0), ("memit", 0)]
    assert resolved[0].prompt == "Eiffel Tower is located in the city of"
    assert resolved[0].paraphrases == ["Eiffel Tower can be found in the city of", "The city where Eiffel Tower stands is"]
    assert resolved[1].params == {"layers": [3, 4, 5]}
    assert resolved[1].paraphrases == ["Danielle Darrieux's native language is"]
    assert resolved[2].prompt == "What university did Watts Humphrey attend?" and resolved[2].relation_id is None
    assert all(r.on_fail == "rollback" for r in resolved)
    script = parse('model "m";\non_fail keep;\nuse rome(layer=3);\nedit "S" P17 -> "T";\n'
                   'batch using memit(layers=[1]) { edit "A" P17 -> "B"; }\nbatch { edit "C" P17 -> "D" using memit; }\n')
    with pytest.raises(ScriptError):  # rome cannot batch (the last batch inherits `use rome`)
        resolve_edits(script, REG, tmp_path)
    script = parse('model "m";\non_fail keep;\nuse rome(layer=3);\nedit "S" P17 -> "T";\n'
                   'batch using memit(layers=[1]) { edit "A" P17 -> "B"; }\nuse memit;\nbatch { edit "C" P17 -> "D"; }\n')
    resolved = resolve_edits(script, REG, tmp_path)
    assert [(r.method, r.params, r.batch, r.on_fail) for r in resolved] == [
        ("rome", {"layer": 3}, None, "keep"), ("memit", {"layers": [1]}, 0, "keep"), ("memit", {}, 1, "keep")]


def test_no_method():
    assert codes(HEAD + 'edit "S" P103 -> "T";\n') == ["no-method"]
    assert codes(HEAD + 'batch { edit "S" P103 -> "T"; }\n') == ["no-method"]


def test_batch_rules():
    assert codes(HEAD + 'batch using solo { edit "S" P103 -> "T"; }\n') == ["no-batch-support"]
    assert codes(HEAD + 'batch using memit { }\n') == ["empty-batch"]
    assert codes(HEAD + 'batch using memit { edit "S" P103 -> "T" using rome; }\n') == ["using-in-batch"]


def test_templates():
    assert diags_of(HEAD + 'relation r "no subject";\n') == [("template-without-subject", 2, 12)]
    assert codes(HEAD + 'relation r "{} and {}";\n') == ["template-many-subjects"]
    assert diags_of(HEAD + 'relation r "{} x" paraphrase "{} y", "nothing";\n') == [("template-without-subject", 2, 38)]
    assert codes(HEAD + 'relation r "{} x";\nrelation r "{} y";\n') == ["duplicate-relation"]


def test_edit_values():
    assert diags_of(HEAD + 'edit "S" P103 -> "" using rome;\n') == [("empty-target", 2, 18)]
    assert diags_of(HEAD + 'edit "S" P103 -> "A" from "A" using rome;\n') == [("target-equals-old", 2, 18)]
    assert diags_of(HEAD + 'edit prompt "Where is it?" subject "Louvre" -> "Rome" using rome;\n') == [
        ("subject-not-in-prompt", 2, 36)]
    assert codes(HEAD + 'edit "" P103 -> "x" using rome;\n') == ["empty-subject"]
    assert codes(HEAD + 'erase "S" P103 from "" using rome;\n') == ["empty-old"]
    assert codes(HEAD + 'insert prompt "Who made S?" subject "S" -> "X" using rome;\n') == []


def test_duplicates_and_contradictions():
    src = HEAD + 'edit "S" P103 -> "A" using rome;\nedit "S" mother_tongue -> "A" using rome;\nedit "S" P103 -> "B" using rome;\n'
    assert diags_of(src) == [("duplicate-edit", 3, 1), ("contradicting-edit", 4, 18)]
    src = HEAD + 'edit "S" P103 -> "A" using rome;\nerase "S" P103 from "French" using rome;\n'
    assert codes(src) == ["contradicting-edit"]
    src = HEAD + 'edit "S" P103 -> "A" using rome;\nedit "S" P17 -> "A" using rome;\n'
    assert codes(src) == []


def test_expect_forms():
    ok = HEAD + ('edit "S" P103 -> "A" using rome expect locality "p" unchanged expect portability "q" -> "r"\n'
                 '  expect fluency >= 4.5 expect efficacy;\n')
    assert codes(ok) == []
    assert diags_of(HEAD + 'edit "S" P103 -> "A" using rome expect locality "p" -> "x";\n') == [("prompt-form", 2, 49)]
    assert codes(HEAD + 'edit "S" P103 -> "A" using rome expect portability "p" unchanged;\n') == ["prompt-form"]
    assert codes(HEAD + 'edit "S" P103 -> "A" using rome expect fluency "p" unchanged;\n') == ["prompt-form"]
    assert diags_of(HEAD + 'edit "S" P103 -> "A" using rome expect efficacy >=;\n') == [("missing-threshold", 2, 49)]


def test_model_save_on_fail(tmp_path):
    assert codes('edit "S" P103 -> "A" using rome;\n') == ["missing-model"]
    assert codes(HEAD + HEAD) == ["multiple-models"]
    assert codes(HEAD + 'save to "a";\nsave to "b";\n', tmp_path) == ["multiple-saves"]
    assert codes(HEAD + 'save to "a" merge;\n', tmp_path) == ["unknown-save-mode"]
    assert codes(HEAD + 'on_fail rollbak;\n') == ["unknown-on-fail"]
    assert codes(HEAD + 'on_fail keep;\non_fail abort;\n') == ["multiple-on-fail"]
    assert codes('model "m" with dtype="fp8";\n') == ["bad-model-setting"]
    _, diags = check_source('model "m" with dtpye="float32";\n', "t.ke", REG)
    assert [(d.code, d.severity, d.hint) for d in diags] == [
        ("unknown-model-setting", "warning", "did you mean `dtype`?")]


def test_save_target_directory(tmp_path):
    src = HEAD + 'save to "out";\n'
    assert codes(src, tmp_path) == []  # does not exist
    (tmp_path / "out").mkdir()
    assert codes(src, tmp_path) == []  # empty
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert codes(src, tmp_path) == ["save-target-exists"]
    (tmp_path / "out" / "kedsl.json").write_text("{}")
    assert codes(src, tmp_path) == []  # a previous kedsl output may be replaced
    (tmp_path / "file").write_text("x")
    assert codes(HEAD + 'save to "file";\n', tmp_path) == ["save-target-exists"]


def test_all_errors_reported_in_order():
    src = (
        'model "m";\nmodel "n";\n'
        'relation r "nothing";\n'
        'edit "S" P103 -> "" using rme;\n'
        'edit "S" P999 -> "x" using rome(layer=-1) expect efficacyy expect locality "a" -> "b";\n'
        'batch using solo { edit "Q" P17 -> "Q2"; }\n'
        'on_fail maybe;\n'
    )
    assert codes(src) == [
        "multiple-models", "template-without-subject", "empty-target", "unknown-method",
        "unknown-relation", "bad-parameter", "unknown-metric", "prompt-form", "no-batch-support",
        "unknown-on-fail",
    ]


def test_resolve_edits_raises_with_all_diagnostics(tmp_path):
    script = parse(HEAD + 'edit "S" P1 -> "x" using rme;\n')
    with pytest.raises(ScriptError) as info:
        resolve_edits(script, REG, tmp_path)
    assert [d.code for d in info.value.diagnostics] == ["unknown-relation", "unknown-method"]
    assert "and 1 more" in info.value.message


def test_a_kind_the_method_cannot_do_is_an_error_with_the_methods_that_can():
    assert diags_of(HEAD + 'erase "S" P103 from "French" using solo;\n') == [("unsupported-kind", 2, 1)]
    _, (d,) = check_source(HEAD + 'erase "S" P103 from "French" using solo;\n', "t.ke", REG)
    assert "`solo` cannot erase" in d.message and "ft_m, memit, rome" in d.hint
    assert codes(HEAD + 'erase "S" P103 from "French" refusal "" using rome;\n') == ["empty-refusal"]
    assert codes(HEAD + 'insert "S" P103 -> "French" using rome;\n') == []
