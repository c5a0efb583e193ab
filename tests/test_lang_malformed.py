"""The corpus of malformed scripts: each file's first line says which error it must
report, where, and (a fragment of) the message: ``# error LINE:COL message``."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from kedsl.lang import check_source
from test_lang_checker import REG

CORPUS = sorted((Path(__file__).parent / "malformed").glob("*.ke"))
HEADER = re.compile(r"# error (\d+):(\d+) (.+)")


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 40


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory where `save to "occupied"` names a foreign, non-empty directory."""
    d = tmp_path_factory.mktemp("malformed")
    (d / "occupied").mkdir()
    (d / "occupied" / "weights.bin").write_text("not ours")
    return d


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_malformed_script_reports_its_error(path: Path, workdir: Path):
    source = path.read_text(encoding="utf-8")
    m = HEADER.match(source.splitlines()[0])
    assert m, f"{path.name}: first line must be '# error LINE:COL message'"
    line, col, fragment = int(m.group(1)), int(m.group(2)), m.group(3)
    script, diags = check_source(source, path.name, REG, base_dir=workdir)
    errors = [d for d in diags if d.is_error]
    assert errors, f"{path.name}: no error reported"
    first = errors[0]
    assert (first.line, first.col) == (line, col), first.render(source)
    assert fragment in first.message
    # Rendering shows the file, position, the source line and a caret under the spot.
    rendered = first.render(source).splitlines()
    assert rendered[0] == f"{path.name}:{line}:{col}: error: {first.message}"
    if line <= len(source.splitlines()):
        assert rendered[1] == "    " + source.splitlines()[line - 1].expandtabs(1)
        assert rendered[2].index("^") == 4 + col - 1
    assert first.code and re.fullmatch(r"[a-z-]+", first.code)
