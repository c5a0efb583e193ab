"""kedsl bench: modes (single undoes each edit, sequential accumulates, batch groups),
aggregates equal the saved per-case values, parameter parsing, and the CLI's errors."""
from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import kedsl_metrics
from kedsl.evaluation.table import PRE_EFFICACY, render_table
from kedsl.evaluation.runner import BenchSettings, aggregate_cases, check_settings, parse_param_args, run_bench
from kedsl.cli import main
from kedsl.evaluation.datasets import load_cases
from kedsl.errors import UsageError
from kedsl.plugin import hookimpl
from kedsl.registry.params import Param
from kedsl.registry import Registry, get_registry
from kedsl.registry.specs import MethodSpec

ZSRE = Path(__file__).parent / "fixtures" / "zsre_slice_50_59.json"
CHEAP = ["efficacy", "generalization", "locality", "efficacy_gen", PRE_EFFICACY]


class NudgeMethod:
    """Adds amount/3 to a layer's MLP output weight; logs each call (the number of
    requests and the model's fingerprint when called) in ``model.meta["calls"]`` (the
    registry imports this module under another name than pytest does) and counts calls
    in its state."""

    def apply(self, model, requests, params, context):
        model.meta.setdefault("calls", []).append((len(requests), model.fingerprint()))
        for r in requests:
            if r.subject == "REJECT ME":
                from kedsl.errors import UsageError

                raise UsageError("cannot edit this one")
        context.state["count"] = context.state.get("count", 0) + 1
        name = model.mlp_out_weight_name(params["layer"])
        w = model.parameter(name)
        context.weights.add_(name, torch.full_like(w, params["amount"]) / 3.0)
        return context.outcome(count=context.state["count"])


def _plugin():
    mod = types.SimpleNamespace(__name__="bench_test_plugin")

    @hookimpl
    def register_methods():
        params = (Param("layer", "int", 1, min=0), Param("amount", "float", 0.5), Param("sizes", "list[int]", [1]))
        return [
            MethodSpec(name="nudge", implementation="tests.test_bench:NudgeMethod", params=params, supports_batch=True),
            MethodSpec(name="nudge1", implementation="tests.test_bench:NudgeMethod", params=params, supports_batch=False),
        ]

    mod.register_methods = register_methods
    return mod


@pytest.fixture
def registry():
    return Registry(plugins=[kedsl_metrics, _plugin()], entry_points=False)


@pytest.fixture
def cases():
    return load_cases(ZSRE, limit=4)  # records 50-53 of the ZsRE head


def test_single_mode_restores_the_model_after_each_case(tiny_llama, registry, cases, tmp_path):
    before = tiny_llama.fingerprint()
    res = run_bench(tiny_llama, cases, BenchSettings("nudge", {"amount": 2.0}, metrics=CHEAP), registry=registry, cache_dir=tmp_path)
    # every call saw the unedited model: the previous case's edit had been undone
    assert tiny_llama.meta["calls"] == [(1, before)] * len(cases)
    assert tiny_llama.fingerprint() == before
    assert res.config["fingerprint_after"] == before == res.config["model_fingerprint"]
    assert all(r["status"] == "measured" for r in res.cases)
    # the edit was in place when measured: a big nudge moves the locality answers
    assert res.aggregate["locality"] < 1.0
    assert res.aggregate["n"]["efficacy"] == len(cases)
    assert res.config["params"] == {"layer": 1, "amount": 2.0, "sizes": [1]}


def test_an_edit_that_changes_nothing_scores_as_the_unedited_model(tiny_llama, registry, cases, tmp_path):
    res = run_bench(tiny_llama, cases, BenchSettings("nudge", {"amount": 0.0}, metrics=CHEAP), registry=registry, cache_dir=tmp_path)
    for r in res.cases:
        assert r["metrics"]["efficacy"] == r["metrics"][PRE_EFFICACY]
        assert r["metrics"]["locality"] == 1.0
        assert r["details"]["efficacy"]["target_ids"] and r["details"]["efficacy"]["predicted"]


def test_sequential_mode_accumulates_edits(tiny_llama, registry, cases, tmp_path):
    before = tiny_llama.fingerprint()
    res = run_bench(tiny_llama, cases, BenchSettings("nudge", mode="sequential", metrics=["efficacy", "locality"]),
                    registry=registry, cache_dir=tmp_path)
    seen = [fp for _, fp in tiny_llama.meta["calls"]]
    assert len(set(seen)) == len(cases)  # each call saw the model with all earlier edits
    assert tiny_llama.fingerprint() != before
    assert res.config["fingerprint_after"] == tiny_llama.fingerprint()
    # method state carried across edits, as the executor carries it
    assert [r["details"]["method"]["count"] for r in res.cases] == [1, 2, 3, 4]


def test_batch_mode_calls_the_method_once_per_group(tiny_llama, registry, tmp_path):
    cases = load_cases(ZSRE, limit=6)  # one record without a target is skipped: 5 cases
    assert len(cases) == 5
    before = tiny_llama.fingerprint()
    res = run_bench(tiny_llama, cases, BenchSettings("nudge", mode="batch", batch_size=2, metrics=["efficacy"]),
                    registry=registry, cache_dir=tmp_path)
    assert [n for n, _ in tiny_llama.meta["calls"]] == [2, 2, 1]
    assert {fp for _, fp in tiny_llama.meta["calls"]} == {before}  # each group on the unedited model
    assert tiny_llama.fingerprint() == before
    assert res.config["batch_size"] == 2 and res.aggregate["n"]["efficacy"] == 5


def test_edits_digest_compares_runs_by_what_each_edit_made(tiny_llama, registry, tmp_path):
    cases = load_cases(ZSRE, limit=6)  # 5 cases
    run = lambda amount: run_bench(tiny_llama, cases, BenchSettings("nudge", {"amount": amount}, mode="batch", batch_size=2, metrics=["efficacy"]),  # noqa: E731
                                   registry=registry, cache_dir=tmp_path)
    first, again, other = run(1.0), run(1.0), run(1.5)
    fps = [r["details"]["fingerprint_edited"] for r in first.cases]
    assert len(fps) == 5 and len(set(fps)) == 1  # nudge makes the same edit for every group
    assert tiny_llama.fingerprint() not in fps  # taken while the edit was in place
    assert first.config["edits_digest"] == again.config["edits_digest"] != other.config["edits_digest"]
    assert "edited  digest" in render_table(first)


def test_batch_mode_refuses_a_method_without_batch_support(registry):
    with pytest.raises(UsageError, match="does not support batch"):
        check_settings(registry, BenchSettings("nudge1", mode="batch", batch_size=2))
    with pytest.raises(UsageError, match="--batch-size applies to --mode batch"):
        check_settings(registry, BenchSettings("nudge", mode="single", batch_size=2))


def test_aggregate_equals_the_mean_of_the_saved_cases(tiny_llama, registry, tmp_path):
    cases = load_cases(ZSRE, limit=3)
    cases[1].request.subject = "REJECT ME"  # the method rejects it: kept, not averaged
    res = run_bench(tiny_llama, cases, BenchSettings("nudge", {"amount": 0.3}), registry=registry, cache_dir=tmp_path)
    out = tmp_path / "bench.json"
    out.write_text(json.dumps(res.to_json()))
    saved = json.loads(out.read_text())
    assert [c["status"] for c in saved["cases"]] == ["measured", "failed", "measured"]
    assert saved["cases"][1]["error"] == "cannot edit this one" and saved["aggregate"]["failed"] == 1
    for m in res.metrics:
        vals = [c["metrics"][m] for c in saved["cases"] if c["metrics"].get(m) is not None]
        assert saved["aggregate"]["n"][m] == len(vals)
        if vals:
            assert saved["aggregate"][m] == pytest.approx(sum(vals) / len(vals))
        else:
            assert saved["aggregate"][m] is None
    # every default column is there: fluency with its pre-edit value; no portability in ZsRE
    assert res.metrics == ["efficacy", "generalization", "portability", "locality", "fluency", "efficacy_gen",
                           PRE_EFFICACY, "pre_fluency"]
    assert saved["aggregate"]["n"]["portability"] == 0 and saved["aggregate"]["n"]["efficacy"] == 2
    assert saved["aggregate"]["n"][PRE_EFFICACY] == 3  # measured before editing, for every case
    assert saved["config"]["versions"]["kedsl"] and saved["config"]["method"] == "nudge"
    table = res.table()
    assert "Edit Succ." in table and "n=2" in table and "1 failed" in table


def test_aggregate_skips_none_values():
    recs = [{"metrics": {"a": 1.0}}, {"metrics": {"a": None}}, {"metrics": {"a": 0.0}}, {"metrics": {}}]
    agg = aggregate_cases(recs, ["a", "b"])
    assert agg["a"] == 0.5 and agg["n"] == {"a": 2, "b": 0} and agg["b"] is None


def test_skipped_metrics_are_named_in_the_table(tiny_llama, registry, cases, tmp_path):
    res = run_bench(tiny_llama, cases[:1], BenchSettings("nudge", metrics=["locality", "efficacy"]), registry=registry, cache_dir=tmp_path)
    assert res.metrics == ["efficacy", "locality"]
    assert "fluency" in res.skipped and "skipped (not in --metrics): generalization" in res.table()
    with pytest.raises(UsageError, match="unknown metric `efficasy`") as e:
        run_bench(tiny_llama, cases[:1], BenchSettings("nudge", metrics=["efficasy"]), registry=registry, cache_dir=tmp_path)
    assert "did you mean `efficacy`" in e.value.hint


def test_param_args_are_typed_by_the_schema(registry):
    spec = registry.method("nudge")
    assert parse_param_args(spec, ["layer=2", "amount=1e-3", "sizes=5,10"]) == {"layer": 2, "amount": 0.001, "sizes": [5, 10]}
    with pytest.raises(UsageError, match="not a valid int"):
        parse_param_args(spec, ["layer=two"])
    with pytest.raises(UsageError, match="must be >= 0"):
        parse_param_args(spec, ["layer=-1"])
    with pytest.raises(UsageError, match="has no parameter `layr`") as e:
        parse_param_args(spec, ["layr=1"])
    assert e.value.hint == "did you mean `layer`?"
    rome = get_registry().method("rome")
    assert parse_param_args(rome, ["layer=auto", "bf16=false", "context_lengths=[4]"]) == {
        "layer": "auto", "bf16": False, "context_lengths": [4]}


# -- the command line ----------------------------------------------------------------------
def test_cli_errors_before_loading_anything(tmp_path):
    r = CliRunner().invoke(main, ["bench", str(tmp_path / "missing.json"), "--method", "rome"])
    assert r.exit_code == 6 and "does not exist" in r.output and "hint: check the path" in r.output
    r = CliRunner().invoke(main, ["bench", str(ZSRE), "--method", "rom"])
    assert r.exit_code == 2 and "unknown method `rom`" in r.output and "did you mean `rome`?" in r.output
    r = CliRunner().invoke(main, ["bench", str(ZSRE), "--method", "rome", "--mode", "batch", "--batch-size", "2"])
    assert r.exit_code == 2 and "does not support batch edits" in r.output
    r = CliRunner().invoke(main, ["bench", str(ZSRE), "--method", "rome", "--param", "v_stps=3"])
    assert r.exit_code == 2 and "did you mean `v_steps`?" in r.output


def test_cli_bench_with_rome_on_a_tiny_local_model(tiny_tokenizer, tmp_path):
    from kedsl.model.saving import save_model

    from conftest import make_tiny_llama

    model_dir = tmp_path / "tiny"
    save_model(make_tiny_llama(tiny_tokenizer), model_dir, {})
    out = tmp_path / "bench.json"
    args = ["bench", str(ZSRE), "--method", "rome", "--model", str(model_dir), "--limit", "3",
            "--param", "layer=1", "--param", "mom2_update_weight=0", "--param", "v_steps=3", "--param", "context_count=0",
            "--param", "bf16=false", "--metrics", "efficacy,generalization,locality,efficacy_gen,pre_efficacy",
            "--json", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "Edit Succ." in r.output and "layer=1" in r.output and "mom2_update_weight=0" in r.output
    saved = json.loads(out.read_text())
    cfg = saved["config"]
    assert cfg["method"] == "rome" and cfg["mode"] == "single" and cfg["params"]["v_lr"] == 0.5  # no preset for the tiny model: the default
    assert cfg["fingerprint_after"] == cfg["model_fingerprint"] and len(cfg["data_sha256"]) == 64
    assert [c["index"] for c in saved["cases"]] == [0, 1, 2] and saved["aggregate"]["n"]["efficacy"] == 3
    assert all(c["details"]["method"]["layer"] == 1 for c in saved["cases"])


def test_fluency_metrics_get_their_pre_edit_column(tiny_llama, registry, cases, tmp_path):
    res = run_bench(tiny_llama, cases[:2], BenchSettings("nudge", {"amount": 2.0}, metrics=["fluency_unrelated"]),
                    registry=registry, cache_dir=tmp_path)
    assert res.metrics == ["fluency_unrelated", "pre_fluency_unrelated"]
    for r in res.cases:  # the pre-edit value is the baseline the metric compared with
        assert r["metrics"]["pre_fluency_unrelated"] == r["details"]["fluency_unrelated"]["baseline"]
    assert res.aggregate["fluency_unrelated"] != res.aggregate["pre_fluency_unrelated"]  # the nudge shows
    assert "Pre-edit Fluency (unrelated)" in render_table(res)
