"""Parsing every construct of the language into the AST, with positions."""
from __future__ import annotations

from pathlib import Path

import pytest

from kedsl.lang import ScriptError, parse, parse_with_diagnostics
from kedsl.lang.ast import Batch, Edit, Ident, ModelStmt, OnFailStmt, RelationStmt, SaveStmt, UseStmt
from kedsl.lang.grammar_file import grammar_path
from kedsl.registry.params import Range

TOUR = (Path(__file__).resolve().parent.parent / "examples" / "language_tour.ke").read_text()


def test_grammar_file_found():
    assert grammar_path().name == "kedsl.lark" and grammar_path().is_file()


def test_language_tour_parses_and_matches_design_doc():
    design = Path("/work/shared/design/language.md")
    if design.exists():  # the example file is the design page's example, verbatim
        assert TOUR in design.read_text()
    script = parse(TOUR, "tour.ke")
    kinds = [type(s).__name__ for s in script.statements]
    assert kinds == ["ModelStmt", "RelationStmt", "Edit", "Edit", "Edit", "Batch", "SaveStmt"]
    eiffel = script.statements[2]
    # The standalone `expect` after the `;` is attached to the edit before it.
    assert [x.metric for x in eiffel.expects] == ["portability"]
    assert eiffel.expects[0].prompts[0].answer == "Italy"
    darrieux = script.statements[3]
    assert darrieux.old == "French" and darrieux.using.params() == {"layers": [3, 4, 5]}
    assert [(x.metric, x.op, x.threshold) for x in darrieux.expects] == [
        ("efficacy", ">=", 0.9), ("generalization", ">=", 0.8), ("locality", None, None), ("fluency", ">=", 4.5)]
    assert darrieux.expects[2].prompts[0].unchanged
    free = script.statements[4]
    assert free.prompt.startswith("What university") and free.subject == "Watts Humphrey" and free.relation is None
    batch = script.statements[5]
    assert batch.using.name == "memit" and [e.subject for e in batch.edits] == ["Toyota", "Apple"]
    assert script.save.path == "out/smollm2-edited" and script.model.ref == "smollm2-135m"
    assert len(script.edits()) == 5


def test_clause_and_statement_expect_give_equal_trees():
    a = parse('edit "S" r -> "T" using rome expect efficacy >= 0.9;')
    b = parse('edit "S" r -> "T" using rome; expect efficacy >= 0.9;')
    assert a == b


def test_positions():
    script = parse('model "m";\n\n  edit "Eiffel Tower" located_in -> "Rome" using rome(layer=5);\n')
    e = script.statements[1]
    assert (e.pos.line, e.pos.col) == (3, 3)
    assert (e.subject_pos.line, e.subject_pos.col, e.subject_pos.end_col) == (3, 8, 22)
    assert (e.relation_pos.col, e.relation_pos.end_col) == (23, 33)
    assert (e.target_pos.col, e.target_pos.end_col) == (37, 43)
    assert (e.using.pos.col, e.using.args[0].pos.col, e.using.args[0].pos.end_col) == (50, 55, 62)


def test_all_forms_and_values():
    src = r'''
model "org/model" with dtype="bfloat16", device="cpu", device_map=auto, trust_remote_code=false;
relation r "{} x" paraphrase "{} y", "{} z";
use memit(layers=3..7, lr=1e-3, neg=-2, f=-0.5, big=2.5E+4, flags=[true, false], names=["a", "b"], mode=auto, e=[]);
on_fail keep;
insert "S" r -> "T";
insert prompt "Who is S?" subject "S" -> "T";
erase "S" r from "Old";
erase prompt "Who is S?" subject "S" from "Old" using rome expect efficacy < 0.1;
edit "S" from -> "T";
batch { edit "A" r -> "B"; expect efficacy == 1; };
save to "out" adapter;
'''
    s = parse(src)
    m, rel, use, on_fail, ins, ins2, er, er2, kw, batch, save = s.statements
    assert isinstance(m, ModelStmt) and m.ref == "org/model"
    assert {a.name: a.value for a in m.settings} == {
        "dtype": "bfloat16", "device": "cpu", "device_map": Ident("auto"), "trust_remote_code": False}
    assert isinstance(rel, RelationStmt) and rel.paraphrases == ["{} y", "{} z"]
    assert isinstance(use, UseStmt) and use.method.params() == {
        "layers": Range(3, 7), "lr": 0.001, "neg": -2, "f": -0.5, "big": 25000.0, "flags": [True, False],
        "names": ["a", "b"], "mode": Ident("auto"), "e": []}
    assert isinstance(use.method.params()["neg"], int)
    assert isinstance(on_fail, OnFailStmt) and on_fail.policy == "keep"
    assert (ins.kind, ins.target, ins.old) == ("insert", "T", None)
    assert (ins2.kind, ins2.prompt, ins2.subject) == ("insert", "Who is S?", "S")
    assert (er.kind, er.target, er.old) == ("erase", None, "Old")
    assert er2.kind == "erase" and er2.expects[0].op == "<" and er2.expects[0].threshold == 0.1
    assert isinstance(kw, Edit) and kw.relation == "from"  # keywords are names where a name is expected
    assert isinstance(batch, Batch) and batch.using is None and batch.edits[0].expects[0].op == "=="
    assert isinstance(save, SaveStmt) and save.mode == "adapter"


def test_string_escapes_and_unicode():
    s = parse(r'edit "Caf\u00e9 \"Q\"\\ \n\t \U0001F600 é 東京" r -> "x";')
    assert s.statements[0].subject == 'Café "Q"\\ \n\t \U0001F600 é 東京'


def test_comments_are_ignored_but_kept():
    s = parse('# a\nmodel "m"; # b\n# c "not a string;\n')
    assert [c.text for c in s.comments] == ["# a", "# b", '# c "not a string;']
    assert len(s.statements) == 1


def test_empty_script_parses():
    assert parse("").statements == []
    assert parse("# only a comment\n").statements == []


def test_syntax_errors_raise_script_error_with_all_of_them():
    src = 'model "m"\nedit "S" r "T";\nedti "x";\nedit "ok" r -> "fine";\nsave to out;\n'
    with pytest.raises(ScriptError) as info:
        parse(src, "bad.ke")
    got = [(d.line, d.col, d.code) for d in info.value.diagnostics]
    assert got == [(1, 10, "missing-semicolon"), (2, 12, "expected-arrow"), (3, 1, "unknown-statement"),
                   (5, 9, "expected-string")]
    assert info.value.message.startswith("bad.ke:1:10: expected `;` after the model statement")


def test_parse_with_diagnostics_returns_none_on_error():
    script, diags = parse_with_diagnostics('edit "S" r -> "T"', "x.ke")
    assert script is None and diags[0].filename == "x.ke" and diags[0].code == "missing-semicolon"


def test_erase_may_name_its_refusal_and_formats_it():
    from kedsl.lang import format_script

    plain, named = parse('erase "S" r from "Old";\nerase prompt "Who is S?" subject "S" from "Old" refusal "No idea." using rome;').edits()
    assert (plain.target, named.target, named.old, named.using.name) == (None, "No idea.", "Old", "rome")
    text = format_script(parse('erase "S" r from "Old" refusal "No idea.";'))
    assert text == 'erase "S" r from "Old" refusal "No idea.";\n' and parse(text).edits()[0].target == "No idea."
    # `refusal` is a keyword only where it may stand: a relation may still be called so
    assert parse('edit "S" refusal -> "T";').edits()[0].relation == "refusal"
