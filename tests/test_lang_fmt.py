"""`format_script`: canonical, idempotent, and parses back to an equal tree."""
from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kedsl.lang import format_script, parse
from kedsl.lang.ast import (
    Arg, Batch, Edit, EditsFrom, Expect, ExpectPrompt, Ident, MethodCall, ModelStmt, OnFailStmt, RelationStmt,
    SaveStmt, Script, UseStmt,
)
from kedsl.lang.syntax_errors import STATEMENT_KEYWORDS
from kedsl.registry.params import Range

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RESERVED = set(STATEMENT_KEYWORDS) | {"true", "false", "with", "paraphrase", "from", "prompt", "subject",
                                      "using", "unchanged", "to", "as"}


def test_examples_format_idempotently():
    for path in sorted(EXAMPLES.glob("*.ke")):
        src = path.read_text()
        once = format_script(parse(src))
        assert parse(once) == parse(src)
        assert format_script(parse(once)) == once


def test_canonical_layout():
    src = ('model   "m"  ;edit "S" r->"T" using rome(layer = 3)expect efficacy>=0.9 ; '
           'batch using memit{edit "A" r->"B";}save to "o";')
    assert format_script(parse(src)) == (
        'model "m";\n'
        'edit "S" r -> "T" using rome(layer=3)\n'
        "    expect efficacy >= 0.9;\n"
        "batch using memit {\n"
        '    edit "A" r -> "B";\n'
        "}\n"
        'save to "o";\n'
    )


def test_comments_and_blank_lines_are_kept():
    src = '# head\nmodel "m";  # why this model\n\n\n# the edit\nedit "S" r -> "T"; # tail\n'
    out = format_script(parse(src))
    assert out == '# head\nmodel "m";  # why this model\n\n# the edit\nedit "S" r -> "T";  # tail\n'
    assert format_script(parse(out)) == out


def test_long_edit_breaks_before_arrow():
    src = 'edit prompt "What university did Watts Humphrey attend?" subject "Watts Humphrey" -> "University of Michigan" using ft_m(steps=25);'
    out = format_script(parse(src))
    assert out.splitlines()[1].startswith('    -> "University of Michigan"')


# -- round trip of generated trees ------------------------------------------------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(lambda s: s not in RESERVED)
texts = st.text(max_size=12)
ints = st.integers(-10**6, 10**6)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
scalars = st.one_of(texts, ints, floats, st.booleans(), names.map(Ident),
                    st.tuples(ints, ints).map(lambda t: Range(*t)))
values = st.one_of(scalars, st.lists(scalars, max_size=3))
args = st.lists(st.builds(Arg, names, values), max_size=3)
calls = st.builds(MethodCall, names, args)
prompts = st.one_of(
    st.builds(ExpectPrompt, texts, texts, st.just(False)),
    st.builds(lambda p: ExpectPrompt(p, None, True), texts),
)
comparisons = st.one_of(
    st.just((None, None)),
    st.tuples(st.sampled_from([">=", ">", "<=", "<", "=="]), st.one_of(st.none(), floats)),
)
expects = st.builds(lambda m, ps, c: Expect(m, ps, c[0], c[1]), names, st.lists(prompts, max_size=2), comparisons)


@st.composite
def edits(draw):
    kind = draw(st.sampled_from(["edit", "insert", "erase"]))
    free = draw(st.booleans())
    e = Edit(subject=draw(texts), kind=kind)
    if free:
        e.prompt = draw(texts)
    else:
        e.relation = draw(names)
    if kind == "erase":
        e.old = draw(texts)
    else:
        e.target = draw(texts)
        if kind == "edit":
            e.old = draw(st.one_of(st.none(), texts))
    e.using = draw(st.one_of(st.none(), calls))
    e.expects = draw(st.lists(expects, max_size=2))
    return e


edits_from = st.builds(
    EditsFrom, texts, st.one_of(st.none(), names), st.lists(st.builds(Arg, names, texts), max_size=3),
    st.one_of(st.none(), calls), st.lists(expects, max_size=2),
)
statements = st.one_of(
    st.builds(ModelStmt, texts, args),
    st.builds(RelationStmt, names, texts, st.lists(texts, max_size=2)),
    st.builds(UseStmt, calls),
    st.builds(OnFailStmt, names),
    edits(),
    edits_from,
    st.builds(Batch, st.one_of(st.none(), calls), st.lists(st.one_of(edits(), edits_from), max_size=3)),
    st.builds(SaveStmt, texts, st.one_of(st.none(), names)),
)
scripts = st.builds(Script, st.lists(statements, max_size=6))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts)
def test_generated_trees_round_trip(script):
    text = format_script(script)
    back = parse(text)
    assert back == script, text
    assert format_script(back) == text
