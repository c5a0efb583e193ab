"""`edits from "FILE"`: every format, the column mapping, every bad row reported at
FILE:ROW[:COLUMN] with the statement's position, and each row resolving to exactly the
request of the written edit with the same fields. Torch-free (the fake registry of
test_lang_checker)."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kedsl.cli import main
from kedsl.lang import ScriptError, check, check_source, format_script, parse, resolve_edits
from kedsl.lang.ast import EditsFrom
from test_lang_checker import REG

FIX = Path(__file__).parent / "fixtures"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HEAD = 'model "m";\nrelation located_in "{} is located in the city of" paraphrase "{} can be found in";\n'

# The same five facts as rows (relation ids and aliases, free prompts, old answers, own
# paraphrases and locality prompts) and as written edits.
ROWS = [
    {"subject": "Eiffel Tower", "relation": "located_in", "prompt": "", "target": "Rome", "old": "Paris",
     "paraphrases": "", "locality": "The Louvre is located in the city of"},
    {"subject": "Danielle Darrieux", "relation": "mother_tongue", "prompt": "", "target": "English", "old": "",
     "paraphrases": "", "locality": ""},
    {"subject": "Toyota", "relation": "P159", "prompt": "", "target": "Berlin", "old": "Toyota City",
     "paraphrases": "", "locality": ""},
    {"subject": "Watts Humphrey", "relation": "", "prompt": "What university did Watts Humphrey attend?",
     "target": "University of Michigan", "old": "", "paraphrases": "Which university did Watts Humphrey go to?",
     "locality": ""},
    {"subject": "Café 東京", "relation": "", "prompt": "Where is Café 東京, \"the\" place?", "target": " Kyoto",
     "old": "", "paraphrases": "", "locality": ""},
]  # fmt: skip
WRITTEN = (
    'edit "Eiffel Tower" located_in -> "Rome" from "Paris";\n'
    'edit "Danielle Darrieux" mother_tongue -> "English";\n'
    'edit "Toyota" P159 -> "Berlin" from "Toyota City";\n'
    'edit prompt "What university did Watts Humphrey attend?" subject "Watts Humphrey" -> "University of Michigan";\n'
    'edit prompt "Where is Café 東京, \\"the\\" place?" subject "Café 東京" -> " Kyoto";\n'
)


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def json_rows(rows: list[dict]) -> list[dict]:
    """The rows as JSON records: empty cells left out, prompts as lists."""
    out = []
    for r in rows:
        rec = {k: v for k, v in r.items() if v}
        for k in ("paraphrases", "locality"):
            if k in rec:
                rec[k] = [rec[k]]
        out.append(rec)
    return out


def check_file(tmp_path: Path, body: str, name: str = "s.ke"):
    script = tmp_path / name
    script.write_text(HEAD + body, encoding="utf-8")
    return check_source(script.read_text(encoding="utf-8"), str(script), REG, base_dir=tmp_path)


def errors_of(tmp_path: Path, body: str) -> list[tuple]:
    script, diags = check_file(tmp_path, body)
    assert script is not None, [d.message for d in diags]
    return [(d.code, d.data_row, d.data_column) for d in diags if d.is_error]


def requests_of(tmp_path: Path, body: str, name: str = "s.ke") -> list[tuple]:
    """Every resolved edit as (prompt, subject, target, old, relation id, paraphrases,
    method, params, batch): what the executor's request and grouping are built from."""
    script = tmp_path / name
    script.write_text(HEAD + body, encoding="utf-8")
    parsed = parse(script.read_text(encoding="utf-8"), str(script))
    return [
        (r.prompt, r.edit.subject, r.edit.target, r.edit.old, r.relation_id, r.paraphrases, r.method, r.params, r.batch)
        for r in resolve_edits(parsed, REG, base_dir=tmp_path)
    ]


def test_rows_resolve_to_the_requests_of_the_written_edits(tmp_path):
    write_csv(tmp_path / "facts.csv", ROWS)
    written = requests_of(tmp_path, "batch using memit(layers=[1, 2]) {\n" + WRITTEN + "}\n", "w.ke")
    from_file = requests_of(tmp_path, 'batch using memit(layers=[1, 2]) {\n    edits from "facts.csv";\n}\n')
    # The Watts Humphrey row gives its own paraphrase; a written free-prompt edit has none.
    assert from_file[3][5] == ["Which university did Watts Humphrey go to?"] and written[3][5] == []
    assert [r[:5] + r[6:] for r in from_file] == [r[:5] + r[6:] for r in written]
    assert [r[5] for r in from_file if r[4] is not None] == [r[5] for r in written if r[4] is not None]
    assert from_file[0][5] == ["Eiffel Tower can be found in"]  # a relation's paraphrases, as written
    # one at a time, with the statement's `using`
    singles = requests_of(tmp_path, 'edits from "facts.csv" using rome(layer=3);\n')
    assert [r[6:] for r in singles] == [("rome", {"layer": 3}, None)] * 5


def test_rows_carry_their_row_number_source_and_locality(tmp_path):
    path = write_csv(tmp_path / "facts.csv", ROWS)
    script = tmp_path / "s.ke"
    script.write_text(HEAD + 'use rome;\nedit "Louvre" located_in -> "Lyon";\nedits from "facts.csv";\n')
    resolved = resolve_edits(parse(script.read_text(), str(script)), REG, base_dir=tmp_path)
    assert [r.row for r in resolved] == [None, 1, 2, 3, 4, 5]
    src = resolved[1].source
    assert src.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and src.size == path.stat().st_size
    assert (src.rows, src.format, src.path, src.file) == (5, "csv", "facts.csv", str(path))
    assert resolved[1].locality == ["The Louvre is located in the city of"] and resolved[2].locality == []
    assert resolved[1].edit.pos.line == 5  # the statement's line


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "json", "parquet", "arrow"])
def test_every_format_gives_the_rows_of_the_csv(tmp_path, fmt):
    write_csv(tmp_path / "facts.csv", ROWS)
    expected = requests_of(tmp_path, 'edits from "facts.csv" using rome;\n', "csv.ke")
    name = f"facts.{fmt}"
    if fmt == "tsv":
        write_csv(tmp_path / name, ROWS, delimiter="\t")
    elif fmt == "jsonl":
        (tmp_path / name).write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in json_rows(ROWS)) + "\n\n")
    elif fmt == "json":
        (tmp_path / name).write_text(json.dumps(json_rows(ROWS), ensure_ascii=False))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        records = json_rows(ROWS)  # every column in every record: the schema is the first record's
        table = pa.Table.from_pylist([{k: r.get(k) for k in ROWS[0]} for r in records])
        if fmt == "parquet":
            pq.write_table(table, tmp_path / name)
        else:
            with pa.OSFile(str(tmp_path / name), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
                w.write_table(table)
    assert requests_of(tmp_path, f'edits from "{name}" using rome;\n') == expected


def test_benchmark_layouts_map_their_fields(tmp_path):
    zsre = json.loads((FIX / "zsre_slice_50_59.json").read_text())
    # record 4 has no new target: it is reported, as a bad row, at its column
    (tmp_path / "zsre.json").write_text(json.dumps(zsre))
    assert errors_of(tmp_path, 'edits from "zsre.json" using rome;\n') == [("empty-target", 5, "alt")]
    (tmp_path / "zsre.json").write_text(json.dumps(zsre[:4]))
    script = tmp_path / "z.ke"
    script.write_text(HEAD + 'edits from "zsre.json" using rome;\n')
    (first, *_) = resolve_edits(parse(script.read_text(), str(script)), REG)
    r = zsre[0]
    assert (first.prompt, first.edit.subject, first.edit.target, first.edit.old) == (
        r["src"], r["subject"], r["alt"].strip(), r["answers"][0].strip())  # answers as `kedsl bench` reads them
    assert first.paraphrases == [r["rephrase"]] and first.locality == [r["loc"]] and first.source.layout == "zsre"

    script.write_text(HEAD + f'edits from "{FIX / "knowedit_sample.json"}" using rome;\n')
    knowedit = resolve_edits(parse(script.read_text(), str(script)), REG)
    assert knowedit[0].edit.target == "University of Michigan" and knowedit[0].edit.old == "Illinois Institute of Technology"
    assert knowedit[0].paraphrases == ["What university did Watts Humphrey take part in?"]
    assert knowedit[1].locality == ["The Louvre is located in the city of", "The Eiffel Tower was designed by"]

    script.write_text(HEAD + f'edits from "{FIX / "counterfact_sample.jsonl"}" using rome;\n')
    (cf, *_) = resolve_edits(parse(script.read_text(), str(script)), REG)
    rec = json.loads((FIX / "counterfact_sample.jsonl").read_text().splitlines()[0])
    rw = rec["requested_rewrite"]
    assert cf.prompt == rw["prompt"].replace("{}", rw["subject"]) and cf.edit.target == rw["target_new"]["str"]
    assert cf.locality == rec["neighborhood_prompts"] and cf.source.layout == "counterfact"


def test_column_mapping(tmp_path):
    rows = [{"entity": r["subject"], "question": r["prompt"], "rel": r["relation"], "answer": r["target"], "was": r["old"]}
            for r in ROWS]  # fmt: skip
    write_csv(tmp_path / "other.csv", rows)
    write_csv(tmp_path / "facts.csv", [{k: v for k, v in r.items() if k not in ("paraphrases", "locality")} for r in ROWS])
    mapped = requests_of(
        tmp_path, 'edits from "other.csv" with subject="entity", prompt="question", relation="rel", target="answer", old="was" using rome;\n'
    )
    assert mapped == requests_of(tmp_path, 'edits from "facts.csv" using rome;\n', "plain.ke")
    # a column that is not there, a field that does not exist, a field given twice
    script, diags = check_file(tmp_path, 'edits from "other.csv" with subject="entty", targt="answer", subject="x" using rome;\n')
    got = [(d.code, d.line, d.col, d.hint) for d in diags]
    assert got[0] == ("unknown-column", 3, 29, "did you mean `entity`?")
    assert got[1][:3] == ("unknown-field", 3, 46) and got[1][3] == "did you mean `target`?"
    assert got[2][:3] == ("duplicate-field", 3, 62)
    # without a mapping, the required columns are missing: one error at the statement
    script, diags = check_file(tmp_path, 'edits from "other.csv" using rome;\n')
    (d,) = diags
    assert (d.code, d.line, d.col, d.data_row) == ("missing-column", 3, 12, None)
    assert "has no `subject` and no `prompt or relation` and no `target` column" in d.message and "`entity`" in d.hint


BAD_ROWS = [
    ("Eiffel Tower", "located_in", "", "Rome", ""),  # 1: fine
    ("", "located_in", "", "Rome", ""),  # 2: no subject
    ("Louvre", "", "Where is the louvre?", "Lyon", ""),  # 3: subject not in the prompt
    ("Big Ben", "located_in", "", "  ", ""),  # 4: empty target
    ("Colosseum", "located_inn", "", "Vienna", ""),  # 5: unknown relation
    ("Eiffel Tower", "located_in", "", "Rome", ""),  # 6: duplicate of row 1
    ("Eiffel Tower", "located_in", "", "Madrid", ""),  # 7: contradicts row 1
    ("Sagrada Familia", "located_in", "", "Oslo", ""),  # 8: contradicts the written edit before the statement
    ("Toyota", "P159", "Where is Toyota?", "Paris", ""),  # 9: both a prompt and a relation
    ("Apple", "", "", "Cupertino", ""),  # 10: neither
    ("Ferrari", "P159", "", "Modena", "Modena"),  # 11: the target equals the old answer (a warning)
    ("Mont Blanc", "located_in", "", "Turin", ""),  # 12: contradicted by the written edit after the statement
]


def test_every_bad_row_is_reported_at_its_row_and_column(tmp_path):
    write_csv(tmp_path / "facts.csv", [dict(zip(("subject", "relation", "prompt", "target", "old"), r)) for r in BAD_ROWS])
    body = ('use rome;\nedit "Sagrada Familia" located_in -> "Barcelona";\nedits from "facts.csv";\n'
            'edit "Mont Blanc" located_in -> "Chamonix";\n')  # fmt: skip
    script, diags = check_file(tmp_path, body)
    got = [(d.code, d.data_row, d.data_column, d.severity) for d in diags]
    assert got == [
        ("empty-subject", 2, "subject", "error"),
        ("subject-not-in-prompt", 3, "prompt", "error"),
        ("empty-target", 4, "target", "error"),
        ("unknown-relation", 5, "relation", "error"),
        ("duplicate-edit", 6, None, "error"),
        ("contradicting-edit", 7, "target", "error"),
        ("contradicting-edit", 8, "target", "error"),
        ("prompt-and-relation", 9, "prompt", "error"),
        ("missing-prompt", 10, "prompt", "error"),
        ("target-equals-old", 11, "target", "warning"),
        ("contradicting-edit", None, None, "error"),  # the written edit after it, at its own line
    ]
    by_row = {d.data_row: d for d in diags}
    assert by_row[5].hint == "did you mean `located_in`?"
    assert by_row[6].hint == f"the same edit is on row 1 of {tmp_path / 'facts.csv'}; remove one"
    assert by_row[8].hint == 'line 4 already sets it to "Barcelona"; keep one of them'
    assert diags[-1].line == 6 and diags[-1].hint == f'row 12 of {tmp_path / "facts.csv"} already sets it to "Turin"; keep one of them'
    # every row error points at the statement that names the file
    assert {(d.line, d.col, d.filename) for d in diags if d.data_row} == {(5, 12, str(tmp_path / "s.ke"))}
    rendered = by_row[3].render(script.source).splitlines()
    assert rendered[0] == f'{tmp_path / "facts.csv"}:3:prompt: error: subject "Louvre" does not occur in the prompt'
    assert rendered[1] == f"  in {tmp_path / 's.ke'}:5:12, the `edits from` statement that reads {tmp_path / 'facts.csv'}"
    assert rendered[2] == '    edits from "facts.csv";' and rendered[3] == "               ^~~~~~~~~~~"
    with pytest.raises(ScriptError, match=r"facts\.csv:2:subject: empty subject \(and 9 more error\(s\)\)"):
        resolve_edits(script, REG)


def _big_csv(path: Path, n: int) -> list[dict]:
    rows = [{"subject": f"Subject {i}", "prompt": f"Where is Subject {i}?", "target": f"City {i}"} for i in range(1, n + 1)]
    write_csv(path, rows)
    return rows


def test_a_subject_missing_from_its_prompt_in_the_last_of_10000_rows(tmp_path):
    rows = _big_csv(tmp_path / "facts.csv", 10_000)
    rows[-1]["prompt"] = "Where is it?"
    write_csv(tmp_path / "facts.csv", rows)
    assert errors_of(tmp_path, 'edits from "facts.csv" using rome;\n') == [("subject-not-in-prompt", 10_000, "prompt")]


def test_invalid_utf8_in_row_7345(tmp_path):
    _big_csv(tmp_path / "facts.csv", 10_000)
    data = (tmp_path / "facts.csv").read_bytes()
    lines = data.split(b"\n")
    lines[7345] = lines[7345].replace(b"Subject 7345", b"Subj\xe9ct 7345", 1)  # line 7346: row 7345
    (tmp_path / "facts.csv").write_bytes(b"\n".join(lines))
    script, diags = check_file(tmp_path, 'edits from "facts.csv" using rome;\n')
    assert [(d.code, d.data_row, d.data_column) for d in diags] == [("not-utf8", 7345, "subject")]
    assert "byte 0xe9" in diags[0].message and "UTF-8" in diags[0].hint


@pytest.mark.parametrize("name, content, code, fragment", [
    ("missing.csv", None, "data-file-missing", "no data file"),
    ("empty.csv", b"", "empty-data-file", "is empty"),
    ("blank.jsonl", b"\n  \n", "empty-data-file", "is empty"),
    ("header.csv", b"subject,prompt,target\r\n", "no-rows", "has no rows below its header"),
    ("text.parquet", b"subject,prompt,target\nA,Where is A?,B\n", "bad-data-file", "is not a Parquet file"),
    ("text.arrow", b"subject,prompt,target\n", "bad-data-file", "is not an Arrow file"),
    ("broken.json", b'[{"subject": "A",', "bad-data-file", "is not valid JSON"),
    ("latin1.json", '[{"subject": "Café"}]'.encode("latin-1"), "not-utf8", "is not UTF-8 text (byte 0xe9 on line 1)"),
    ("facts.txt", b"subject,prompt,target\n", "unknown-format", "cannot tell the format"),
    ("dup.csv", b"subject,target,subject\nA,B,C\n", "duplicate-column", "appears twice"),
    ("sanitation.json", json.dumps({"success": [{"question": "Q?"}], "locality": []}).encode(), "unsupported-layout",
     "holds sanitation records"),
])  # fmt: skip
def test_a_file_that_cannot_be_read_is_an_error_at_the_statement(tmp_path, name, content, code, fragment):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    script, diags = check_file(tmp_path, f'batch using memit {{\n    edits from "{name}";\n}}\n')
    (d,) = diags
    assert (d.code, d.line, d.col, d.data_row) == (code, 4, 16, None)
    assert fragment in d.message and d.hint


def test_jsonl_lines_that_are_not_json_are_each_reported(tmp_path):
    good = json.dumps({"subject": "A", "prompt": "Where is A?", "target": "B"})
    (tmp_path / "facts.jsonl").write_text("\n".join([good, "", '{"subject": "C",', '["a list"]', "not json"]) + "\n")
    got = errors_of(tmp_path, 'edits from "facts.jsonl" using rome;\n')
    assert got == [("bad-json", 2, None), ("bad-row", 3, None), ("bad-json", 4, None)]
    script, diags = check_file(tmp_path, 'edits from "facts.jsonl" using rome;\n')
    assert "line 3 is not valid JSON" in diags[0].message and "line 5" in diags[2].message  # the blank line counts as a line


def test_rows_with_the_wrong_number_of_cells_and_unreadable_values(tmp_path):
    (tmp_path / "facts.csv").write_text('subject,prompt,target,paraphrases\nA,Where is A?,B,\nC,Where is C?\nD,Where is D?,E,"[1, 2]"\n')
    assert errors_of(tmp_path, 'edits from "facts.csv" using rome;\n') == [("bad-row", 2, None), ("bad-value", 3, "paraphrases")]
    (tmp_path / "facts.jsonl").write_text(json.dumps({"subject": {"x": 1}, "prompt": "p", "target": True}) + "\n")
    assert errors_of(tmp_path, 'edits from "facts.jsonl" using rome;\n') == [("bad-value", 1, "subject"), ("bad-value", 1, "target")]


def test_list_cells_of_a_csv(tmp_path):
    (tmp_path / "facts.csv").write_text(
        'subject,prompt,target,paraphrases,locality\n'
        'A,Where is A?,B,"Where can A be found?\r\nWhat city is A in?\n",'
        '"[""The capital of France is"", ""Paris is in""]"\n'
    )
    script = tmp_path / "s.ke"
    script.write_text(HEAD + 'edits from "facts.csv" using rome;\n')
    (r,) = resolve_edits(parse(script.read_text(), str(script)), REG)
    assert r.paraphrases == ["Where can A be found?", "What city is A in?"]
    assert r.locality == ["The capital of France is", "Paris is in"]


def test_format_names_and_as(tmp_path):
    write_csv(tmp_path / "facts.txt", ROWS, delimiter="\t")
    assert errors_of(tmp_path, 'edits from "facts.txt" as tsv using rome;\n') == []
    script, diags = check_file(tmp_path, 'edits from "facts.txt" as tvs using rome;\n')
    (d,) = diags
    assert (d.code, d.line, d.col, d.hint) == ("unknown-format", 3, 27, "did you mean `tsv`?")
    (tmp_path / "zsre.data").write_text(json.dumps(json.loads((FIX / "zsre_slice_50_59.json").read_text())[:2]))
    assert errors_of(tmp_path, 'edits from "zsre.data" as zsre using rome;\n') == []


def test_methods_batches_and_expectations_apply_to_the_statement(tmp_path):
    write_csv(tmp_path / "facts.csv", ROWS)
    script, diags = check_file(tmp_path, 'edits from "facts.csv";\nbatch using solo { edits from "facts.csv" using rome; }\n')
    assert [(d.code, d.line, d.col) for d in diags if not d.data_row] == [
        ("no-method", 3, 1), ("no-batch-support", 4, 13), ("using-in-batch", 4, 49)]
    # the second statement repeats the first's rows: duplicates, at the second's rows
    assert [(d.code, d.data_row) for d in diags if d.data_row] == [("duplicate-edit", n) for n in range(1, 6)]
    # `expect ...;` after the statement is one of its clauses; the metric is checked
    script, diags = check_file(tmp_path, 'edits from "facts.csv" using rome;\nexpect efficacy >= 0.9;\nexpect eficacy;\n')
    assert [(d.code, d.line) for d in diags] == [("unknown-metric", 5)]
    (stmt,) = script.data_statements()
    assert isinstance(stmt, EditsFrom) and [x.metric for x in stmt.expects] == ["efficacy", "eficacy"]


def test_a_file_named_twice_is_read_once(tmp_path, monkeypatch):
    import kedsl.lang.checker as checker

    write_csv(tmp_path / "facts.csv", ROWS)
    reads = []
    original = checker.load_data
    monkeypatch.setattr(checker, "load_data", lambda *a: reads.append(a) or original(*a))
    script, diags = check_file(tmp_path, 'edits from "facts.csv" using rome;\nbatch using memit { edits from "facts.csv"; }\n')
    assert [d.code for d in diags] == ["duplicate-edit"] * 5  # the second statement repeats every row
    check(script, REG)
    assert len(reads) == 1 and len(script.data) == 1


def test_unsupported_layout_can_be_read_as_plain_columns(tmp_path):
    (tmp_path / "bio.json").write_text(json.dumps([{"concept": "Ada", "text": "Ada was born in", "labels": "London"}]))
    assert errors_of(tmp_path, 'edits from "bio.json" with subject="concept", prompt="text", target="labels" using rome;\n') == []


def test_the_example_checks_cleanly(tmp_path):
    path = EXAMPLES / "from_data.ke"
    script, diags = check_source(path.read_text(), str(path), REG, base_dir=tmp_path)
    assert diags == [] and len(resolve_edits(script, REG, base_dir=tmp_path)) == 5


def test_fmt_keeps_the_statement_as_written():
    src = ('model "m";\n# the spreadsheet\nbatch using memit {\n'
           '    edits from "data/facts.csv" as csv with subject="entity", target="answer" expect efficacy >= 0.9;  # all rows\n'
           '}\nedits from "more.jsonl" using rome;\nexpect locality;\n')  # fmt: skip
    once = format_script(parse(src))
    assert once == (
        'model "m";\n# the spreadsheet\nbatch using memit {\n'
        '    edits from "data/facts.csv" as csv with subject="entity", target="answer"\n'
        "        expect efficacy >= 0.9;  # all rows\n"
        "}\n"
        'edits from "more.jsonl" using rome\n'
        "    expect locality;\n"
    )
    assert parse(once) == parse(src) and format_script(parse(once)) == once
    long = 'edits from "a/very/long/path/to/the/data/file/of/facts.csv" with subject="the subject column" using memit(layers=[1, 2]);'
    assert format_script(parse(long)).splitlines()[1:] == ['    with subject="the subject column"', "    using memit(layers=[1, 2]);"]


def test_check_cli_counts_rows_and_reports_them_in_json(tmp_path):
    write_csv(tmp_path / "facts.csv", ROWS)
    good = tmp_path / "good.ke"
    good.write_text('model "m";\nrelation located_in "{} is in";\nuse rome;\nedit "Louvre" located_in -> "Lyon";\nedits from "facts.csv";\n')
    r = CliRunner().invoke(main, ["check", str(good)])
    assert r.exit_code == 0 and r.output.strip() == f"{good}: ok (6 edits, 5 of them rows of 1 data file)"
    write_csv(tmp_path / "bad.csv", [dict(ROWS[0], subject="")] + ROWS[1:])
    bad = tmp_path / "bad.ke"
    bad.write_text(good.read_text().replace("facts.csv", "bad.csv"))
    r = CliRunner().invoke(main, ["check", "--json", str(bad)])
    assert r.exit_code == 2
    (d,) = json.loads(r.stdout)
    assert (d["data_file"], d["data_row"], d["data_column"], d["code"]) == (str(tmp_path / "bad.csv"), 1, "subject", "empty-subject")
    assert (d["filename"], d["line"], d["col"]) == (str(bad), 5, 12)
    r = CliRunner().invoke(main, ["check", str(bad)])
    assert r.exit_code == 2 and f"{tmp_path / 'bad.csv'}:1:subject: error: empty subject" in r.output


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json"])
def test_mangled_data_files_get_diagnostics_never_a_crash(tmp_path, fmt):
    import random

    write_csv(tmp_path / "facts.csv", ROWS)
    write_csv(tmp_path / "facts.tsv", ROWS, delimiter="\t")
    (tmp_path / "facts.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in json_rows(ROWS)))
    (tmp_path / "facts.json").write_text(json.dumps(json_rows(ROWS), ensure_ascii=False))
    original = (tmp_path / f"facts.{fmt}").read_bytes()
    pieces = [b'"', b",", b"\t", b"\n", b"\r", b"{", b"}", b"[", b"]", b"\xff", b"\xc3", b"\x00", b"\\", b":", b"null", b"1"]
    rng = random.Random(fmt)
    for _ in range(150):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data) + 1)
            if rng.random() < 0.5:
                del data[i:i + rng.randint(1, 8)]
            else:
                data[i:i] = rng.choice(pieces)
        (tmp_path / f"m.{fmt}").write_bytes(bytes(data))
        script, diags = check_file(tmp_path, f'edits from "m.{fmt}" using rome;\n')
        assert script is not None and all(d.code and d.message for d in diags)
