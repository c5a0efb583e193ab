"""`kedsl bench --suite knowedit`: the cells, the resume after a killed run, the summaries
and the table; the names are checked before any model loads."""
from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from conftest import knowedit_data_dir
from kedsl.cli import main
from kedsl.evaluation import suite as suite_mod
from kedsl.registry import Registry

@pytest.fixture
def data_dir(tmp_path):
    return knowedit_data_dir(tmp_path / "data")


def test_suite_runs_each_cell_once_and_resumes(data_dir, tmp_path, tiny_llama, monkeypatch):
    calls = []
    real = suite_mod.run_bench

    def counting(model, cases, settings, **kw):
        calls.append((kw["data"]["dataset"], settings.method, [c.index for c in cases]))
        return real(model, cases, settings, **kw)

    monkeypatch.setattr(suite_mod, "run_bench", counting)
    out = tmp_path / "out"
    params = {"ft_m": {"layer": 1, "steps": 2}, "ike": {"layer": 1}}
    args = dict(limit=1, params=params, datasets=["ZsRE", "Sanitation"])
    aggregates = suite_mod.run_suite(tiny_llama, Registry(), "knowedit", ["ft_m", "ike"], data_dir, out, **args)
    assert calls == [("ZsRE", "ft_m", [1]), ("ZsRE", "ike", [1]), ("Sanitation", "ft_m", [0]), ("Sanitation", "ike", [0])]
    assert set(aggregates) == {"ZsRE", "Sanitation"} and aggregates["Sanitation"]["ft_m"]["cases"] == 1
    # a killed run: one cell's JSON never written; the same command redoes only that cell
    (out / "ZsRE" / "ike.json").unlink()
    calls.clear()
    suite_mod.run_suite(tiny_llama, Registry(), "knowedit", ["ft_m", "ike"], data_dir, out, **args)
    assert calls == [("ZsRE", "ike", [1])]
    # a changed default (no setting given changed) makes the cell stale too
    calls.clear()
    registry = Registry()
    spec = registry.method("ft_m")
    changed = tuple(dataclasses.replace(p, default=p.default * 2) if p.name == "nll_tol" else p for p in spec.params)
    monkeypatch.setitem(registry.methods, "ft_m", dataclasses.replace(spec, params=changed, config=None))
    suite_mod.run_suite(tiny_llama, registry, "knowedit", ["ft_m", "ike"], data_dir, out, **{**args, "datasets": ["ZsRE"]})
    assert calls == [("ZsRE", "ft_m", [1])]
    # other settings are other cells
    calls.clear()
    suite_mod.run_suite(tiny_llama, Registry(), "knowedit", ["ft_m"], data_dir, out, **{**args, "limit": 2, "datasets": ["ZsRE"]})
    assert calls == [("ZsRE", "ft_m", [1, 2])]
    summary = json.loads((out / "Sanitation.json").read_text())
    assert summary["task"] == "erasure" and set(summary["methods"]) == {"ft_m", "ike"}
    assert summary["paper"]["efficacy"]["FT-M"] == 75.00
    assert "efficacy" in summary["methods"]["ft_m"]["config"]["protocols"]
    table = (out / "knowedit_table.md").read_text()
    assert "| **Sanitation** (erasure) |" in table and table.splitlines()[0] == "| Dataset | Metric | ft_m (FT-M) | ike (ICE) |"
    assert "WikiBio" not in table  # no cell run: no rows
    assert "(75.00)" in table  # the paper's FT-M Edit Succ. on Sanitation beside ours


def test_suite_names_are_checked_before_the_model_loads(data_dir):
    runner = CliRunner()
    r = runner.invoke(main, ["bench", "--suite", "knowedit", "--methods", "rome,nope"])
    assert r.exit_code == 2 and "unknown method `nope`" in r.output
    r = runner.invoke(main, ["bench", "--suite", "knowedit", "--methods", "rome", "--datasets", "ZsRe"])
    assert r.exit_code == 2 and "ZsRE" in r.output
    r = runner.invoke(main, ["bench", "--suite", "knowdit", "--methods", "rome"])
    assert r.exit_code == 2 and "knowedit" in r.output
    r = runner.invoke(main, ["bench", "data.json", "--suite", "knowedit", "--methods", "rome"])
    assert r.exit_code == 2
    r = runner.invoke(main, ["bench", "--suite", "knowedit", "--methods", "rome", "--param", "ft_m.steps=2"])
    assert r.exit_code == 2 and "METHOD.NAME=VALUE" in r.output


def test_the_unedited_models_baselines_are_measured_once_per_dataset(data_dir, tmp_path, tiny_llama, monkeypatch):
    from kedsl_metrics import measures

    calls = []
    real = measures.Locality.baseline
    monkeypatch.setattr(measures.Locality, "baseline", lambda self, model, cases: calls.append(len(cases)) or real(self, model, cases))
    suite_mod.run_suite(tiny_llama, Registry(), "knowedit", ["ft_m", "ike"], data_dir, tmp_path / "out", limit=2,
                        params={"ft_m": {"layer": 1, "steps": 2}, "ike": {"layer": 1}}, datasets=["ZsRE"])  # fmt: skip
    assert calls == [2]  # two methods, one dataset: one locality baseline
