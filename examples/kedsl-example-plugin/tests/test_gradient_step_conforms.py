"""The plugin's own test: kedsl's conformance kit run against ``gradient_step`` on a tiny model
(kedsl's test suite runs it too)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the package, installed or not

import kedsl_example_plugin  # noqa: E402
from kedsl.plugin.testing import check_method  # noqa: E402


def test_gradient_step_conforms(tmp_path):
    report = check_method("gradient_step", plugins=[kedsl_example_plugin], params={"steps": 3}, workdir=tmp_path)
    report.assert_ok()
    assert [c.name for c in report.checks] == ["params", "undo", "determinism", "round_trip", "kinds"]
