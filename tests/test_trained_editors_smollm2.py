"""Integration: the trained editors shipped for SmolLM2 (examples/editors/, trained with
the README's `kedsl train` commands) edit the embedded default model through `kedsl apply`:
the expectation passes, the edit is recorded with the editor's training run, the saved
model reloads with the edit, and `kedsl revert` gives back the base model's weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EDITORS = REPO / "examples" / "editors"
KEDSL = [sys.executable, "-m", "kedsl.cli"]

pytestmark = pytest.mark.smollm2

SCRIPT = """model "smollm2-135m";
edit prompt "The Eiffel Tower is located in the city of" subject "Eiffel Tower" -> "Rome"
    using {method}(editor="{editor}")
    expect efficacy >= 0.9;
save to "{out}";
"""


def _kedsl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*KEDSL, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=900)


@pytest.mark.parametrize("method", ["mend", "serac"])
def test_the_shipped_editor_edits_smollm2_and_reverts(method, tmp_path):
    editor = EDITORS / f"{method}-smollm2"
    assert (editor / "editor.json").is_file(), f"{editor} is missing: train it with the README's command"
    script = tmp_path / "edit.ke"
    script.write_text(SCRIPT.format(method=method, editor=editor, out=tmp_path / "edited"), encoding="utf-8")
    db = str(tmp_path / "k.db")
    done = _kedsl("apply", str(script), "--db", db, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    log = json.loads(_kedsl("log", "--db", db, "--json", cwd=tmp_path).stdout)
    (edit,) = [e for run in log for e in run["edits"]]
    shown = json.loads(_kedsl("show", edit["id"], "--db", db, "--json", cwd=tmp_path).stdout)
    trained = json.loads((editor / "editor.json").read_text())
    assert shown["info"]["editor_sha256"] == trained["sha256"] and shown["info"]["editor_train_runs"] == trained["train_runs"]
    reverted = _kedsl("revert", edit["id"], "--db", db, "--model", str(tmp_path / "edited"), "--out", str(tmp_path / "reverted"), cwd=tmp_path)
    assert reverted.returncode == 0, reverted.stdout + reverted.stderr
    edited = json.loads((tmp_path / "edited" / "kedsl.json").read_text())
    back = json.loads((tmp_path / "reverted" / "kedsl.json").read_text())
    assert back["fingerprint"] == edited["provenance"]["fingerprint_before"] and not back.get("attachments")
    if method == "serac":  # the edit is a memory saved beside the unchanged weights
        assert edited["attachments"] and edited["fingerprint"] == back["fingerprint"]
    else:
        assert edited["fingerprint"] != back["fingerprint"]
