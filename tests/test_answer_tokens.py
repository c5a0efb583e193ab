"""bench/answer_tokens.py: the first answer token and the later ones are counted apart, per
block of edits in edit order, from the per-case predictions a bench JSON keeps."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "answer_tokens.py"


@pytest.fixture(scope="module")
def answer_tokens():
    spec = importlib.util.spec_from_file_location("answer_tokens", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def case(index: int, target: list[int], efficacy: list[int], generalization: list[int], status: str = "measured") -> dict:
    return {"index": index, "status": status, "details": {
        "efficacy": {"target_ids": [target], "predicted": [efficacy]},
        "generalization": {"target_ids": [target], "predicted": [generalization]},
    }}  # fmt: skip


def test_first_and_later_tokens_are_counted_apart_per_block(answer_tokens, tmp_path):
    cases = [
        case(0, [5, 6, 7], [5, 6, 7], [9, 6, 7]),  # paraphrase: first token wrong, later right
        case(1, [5, 6], [5, 0], [5, 6]),  # edit prompt: later token wrong
        case(2, [8], [8], [0]),  # one-token answer: no later tokens
        case(3, [1, 2], [1, 2], [1, 2], status="failed"),  # not measured: left out
    ]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"cases": cases}), encoding="utf-8")
    rows = answer_tokens.blocks(path, size=2)
    assert [(r["first_case"], r["cases"]) for r in rows] == [(0, 2), (2, 1), ("all", 3)]
    first_block, whole = rows[0], rows[-1]
    assert first_block["efficacy"]["first"] == 1.0 and first_block["efficacy"]["later"] == pytest.approx(2 / 3)
    assert first_block["generalization"]["first"] == 0.5 and first_block["generalization"]["later"] == 1.0
    assert whole["generalization"]["first"] == pytest.approx(1 / 3) and whole["generalization"]["later_n"] == 3
    assert rows[1]["efficacy"]["later_n"] == 0  # nothing to count is not counted as right
