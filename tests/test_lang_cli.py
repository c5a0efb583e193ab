"""`kedsl check` and `kedsl fmt`: exit codes, output, and no torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from kedsl.cli import main

GOOD = 'model "m";\nrelation r "{} is in";\n'
BAD = 'model "m";\nedit "S" r -> "T"\nsave to "o";\n'


def _write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_check_ok_and_invalid(tmp_path):
    runner = CliRunner()
    good = _write(tmp_path, "good.ke", GOOD)
    r = runner.invoke(main, ["check", good])
    assert r.exit_code == 0 and r.output.strip() == f"{good}: ok (0 edits)"
    bad = _write(tmp_path, "bad.ke", BAD)
    r = runner.invoke(main, ["check", good, bad])
    assert r.exit_code == 2
    assert f"{bad}:2:18: error: expected `;` after the edit" in r.output
    assert '    edit "S" r -> "T"' in r.output and "hint: every statement ends with `;`" in r.output


def test_check_json(tmp_path):
    bad = _write(tmp_path, "bad.ke", BAD)
    r = CliRunner().invoke(main, ["check", "--json", bad])
    assert r.exit_code == 2
    (d,) = json.loads(r.output)
    assert d["code"] == "missing-semicolon" and (d["line"], d["col"], d["end_col"]) == (2, 18, 19)
    assert set(d) >= {"severity", "message", "line", "col", "end_col", "hint", "code"}


def test_check_usage_errors(tmp_path):
    r = CliRunner().invoke(main, ["check", str(tmp_path / "missing.ke")])
    assert r.exit_code == 2 and "no such file" in r.output
    assert CliRunner().invoke(main, ["check"]).exit_code == 2


def test_fmt_print_check_write(tmp_path):
    messy = _write(tmp_path, "messy.ke", 'model   "m" ;edit "S" r->"T";')
    runner = CliRunner()
    r = runner.invoke(main, ["fmt", messy])
    assert r.exit_code == 0 and r.output == 'model "m";\nedit "S" r -> "T";\n'
    assert runner.invoke(main, ["fmt", "--check", messy]).exit_code == 1
    assert runner.invoke(main, ["fmt", "--write", messy]).exit_code == 0
    assert Path(messy).read_text() == 'model "m";\nedit "S" r -> "T";\n'
    assert runner.invoke(main, ["fmt", "--check", messy]).exit_code == 0
    bad = _write(tmp_path, "bad.ke", BAD)
    r = runner.invoke(main, ["fmt", bad])
    assert r.exit_code == 2 and "expected `;` after the edit" in r.output


def test_check_and_fmt_do_not_import_torch(tmp_path):
    # with data files: CSV and JSON Lines are read without torch, transformers or datasets
    _write(tmp_path, "facts.csv", "subject,relation,target\nEiffel Tower,r,Rome\n")
    _write(tmp_path, "facts.jsonl", '{"subject": "Louvre", "prompt": "Where is the Louvre?", "target": "Lyon"}\n')
    script = _write(tmp_path, "s.ke", GOOD + 'edits from "facts.csv" using rome;\nbatch using memit { edits from "facts.jsonl"; }\n')
    code = (
        "import sys\n"
        "from kedsl.cli import main\n"
        "for args in (['check', sys.argv[1]], ['fmt', sys.argv[1]]):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
        "bad = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("clean")
