"""Integration: `kedsl apply examples/eiffel.ke` on the embedded default model.

The README's main job: after the edit SmolLM2 says Rome for the Eiffel Tower and still
Paris for the Louvre; the saved directory loads with plain transformers and says the
same. (Determinism is tested where it is cheap: ROME, MEMIT and saving on tiny models in
test_rome, test_memit and test_saving; on SmolLM2 by the benchmarks' fingerprints. A
second apply here cost ~100 s of CI for the same check.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KEDSL = [sys.executable, "-m", "kedsl.cli"]

pytestmark = pytest.mark.smollm2


def _apply(tmp_path: Path, out: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*KEDSL, "apply", str(REPO / "examples" / "eiffel.ke"), "--db", str(tmp_path / "k.db"), "--out", str(tmp_path / out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )


def _greedy(model, tok, prompt: str, n: int = 4) -> str:
    import torch

    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1] :])


def test_eiffel_to_rome_end_to_end(tmp_path):
    first = _apply(tmp_path, "a")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "applied" in first.stdout

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert _greedy(model, tok, "The Eiffel Tower is located in the city of").strip().startswith("Rome")
    assert _greedy(model, tok, "The Louvre is located in the city of").strip().startswith("Paris")
    meta = json.loads((tmp_path / "a" / "kedsl.json").read_text())
    assert meta["provenance"]["edits"][0]["status"] == "applied"
