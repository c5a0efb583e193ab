"""Executor: expectations gate edits; rollback is bit-exact; policies; batches; records."""
from __future__ import annotations

import types

import pytest
import torch

from kedsl.editing.request import EditRequest
from kedsl.executor import Executor, PlannedEdit
from kedsl.plugin import hookimpl
from kedsl.lang import ast
from kedsl.registry.params import Param
from kedsl.registry import Registry
from kedsl.registry.specs import MethodSpec, MetricSpec
from kedsl.provenance.store import Store, event_hash


class ShiftMethod:
    """Adds `amount` to the chosen layer's MLP output weight (one call per unit)."""

    def apply(self, model, requests, params, context):
        name = model.mlp_out_weight_name(params["layer"])
        w = model.parameter(name)
        # A delta whose float addition is not exactly invertible (so undo must restore copies).
        context.weights.add_(name, torch.full_like(w, params["amount"]) / 3.0)
        return context.outcome(n=len(requests))


class BrokenMethod:
    """Changes a weight, then fails: the executor must leave no trace."""

    def apply(self, model, requests, params, context):
        context.weights.add_(model.mlp_out_weight_name(0), torch.ones_like(model.mlp_out(0).weight))
        raise RuntimeError("method failed half-way")


class FixedMetric:
    """Returns the value the test puts in case.meta['value'], or the weight sum change."""

    def baseline(self, model, cases):
        return [float(model.mlp_out(1).weight.detach().sum()) for _ in cases]

    def measure(self, model, cases, baselines):
        from kedsl.evaluation.metric import MetricResult

        out = []
        for i, c in enumerate(cases):
            moved = float(model.mlp_out(1).weight.detach().sum()) - (baselines[i] if baselines else 0.0)
            out.append(MetricResult(value=1.0 if abs(moved) < 1e-9 else 0.0, n=1, details={"moved": moved}))
        return out


def _plugin():
    mod = types.SimpleNamespace()

    @hookimpl
    def register_methods():
        return [
            MethodSpec(
                name="shift",
                implementation="tests.test_executor:ShiftMethod",
                params=(Param("layer", "int", 1, min=0), Param("amount", "float", 1.0)),
                supports_batch=True,
            ),
            MethodSpec(name="broken", implementation="tests.test_executor:BrokenMethod"),
        ]

    @hookimpl
    def register_metrics():
        return [
            MetricSpec(
                name="unmoved",
                implementation="tests.test_executor:FixedMetric",
                default_threshold=1.0,
                needs_baseline=True,
                prompt_form="none",
            )
        ]

    mod.register_methods = register_methods
    mod.register_metrics = register_metrics
    mod.__name__ = "test_plugin"
    return mod


@pytest.fixture
def registry():
    return Registry(plugins=[_plugin()], entry_points=False)


def _edit(subject="Eiffel Tower", layer=1, expects=(), batch=None):
    req = EditRequest(subject=subject, prompt=f"The {subject} is located in", target="Rome")
    return PlannedEdit(req, "shift", {"layer": layer}, list(expects), batch=batch)


def test_passing_edit_is_kept(tiny_llama, registry, tmp_path):
    before = tiny_llama.fingerprint()
    ex = Executor(tiny_llama, registry, cache_dir=tmp_path, says_now_tokens=0)
    (r,) = ex.run([_edit(layer=2, expects=[ast.Expect("unmoved")])])  # layer 2: metric watches layer 1
    assert r.status == "applied" and r.passed
    assert tiny_llama.fingerprint() != before
    assert list(r.outcome.changes) == [tiny_llama.mlp_out_weight_name(2)]


def test_failed_expectation_rolls_back_bit_exactly(tiny_llama, registry, tmp_path):
    before = tiny_llama.fingerprint()
    ex = Executor(tiny_llama, registry, cache_dir=tmp_path, says_now_tokens=0)
    (r,) = ex.run([_edit(layer=1, expects=[ast.Expect("unmoved")])])
    assert r.status == "rolled_back" and not r.passed
    assert r.expectations[0].value == 0.0 and r.expectations[0].threshold == 1.0
    assert tiny_llama.fingerprint() == before


def test_on_fail_keep_keeps_the_edit(tiny_llama, registry, tmp_path):
    before = tiny_llama.fingerprint()
    ex = Executor(tiny_llama, registry, on_fail="keep", cache_dir=tmp_path, says_now_tokens=0)
    (r,) = ex.run([_edit(layer=1, expects=[ast.Expect("unmoved")])])
    assert r.status == "applied" and not r.passed
    assert tiny_llama.fingerprint() != before


def test_on_fail_abort_skips_the_rest(tiny_llama, registry, tmp_path):
    ex = Executor(tiny_llama, registry, on_fail="abort", cache_dir=tmp_path, says_now_tokens=0)
    reports = ex.run([_edit(layer=1, expects=[ast.Expect("unmoved")]), _edit("Louvre", layer=2)])
    assert [r.status for r in reports] == ["rolled_back", "skipped"]


def test_explicit_threshold_overrides_default(tiny_llama, registry, tmp_path):
    ex = Executor(tiny_llama, registry, cache_dir=tmp_path, says_now_tokens=0)
    (r,) = ex.run([_edit(layer=1, expects=[ast.Expect("unmoved", op="<=", threshold=0.5)])])
    assert r.status == "applied" and r.passed


def test_batch_is_one_method_call_and_rolls_back_together(tiny_llama, registry, tmp_path):
    before = tiny_llama.fingerprint()
    ex = Executor(tiny_llama, registry, cache_dir=tmp_path, says_now_tokens=0)
    reports = ex.run([_edit("A", layer=1, batch=0), _edit("B", layer=1, batch=0, expects=[ast.Expect("unmoved")])])
    assert reports[0].outcome is reports[1].outcome and reports[0].outcome.info["n"] == 2  # one call
    assert [r.status for r in reports] == ["rolled_back", "rolled_back"]
    assert tiny_llama.fingerprint() == before


def test_unknown_on_fail_policy_is_a_usage_error(tiny_llama, registry, tmp_path):
    from kedsl.errors import UsageError

    with pytest.raises(UsageError):
        Executor(tiny_llama, registry, on_fail="ignore", cache_dir=tmp_path)


def test_store_records_run_edits_metrics_and_chained_events(tiny_llama, registry, tmp_path):
    store = Store.open(tmp_path / "k.db")
    run_id = store.begin_run(script_text="x", model_ref="tiny", fingerprint_before=tiny_llama.fingerprint())
    ex = Executor(tiny_llama, registry, cache_dir=tmp_path, store=store, run_id=run_id, says_now_tokens=0)
    reports = ex.run([_edit(layer=2, expects=[ast.Expect("unmoved")]), _edit("Louvre", layer=1, expects=[ast.Expect("unmoved")])])
    store.end_run(run_id, "expectations_failed", fingerprint_after=tiny_llama.fingerprint())
    edits = store.edits(run_id)
    assert [e["status"] for e in edits] == ["applied", "rolled_back"]
    assert edits[0]["outcome_sha256"] and not edits[1]["outcome_sha256"]
    assert (store.blob_dir / f"{edits[0]['outcome_sha256']}.safetensors").exists()
    assert [m["passed"] for m in store.metric_results(edits[1]["id"])] == [0]
    events = list(store.db.query("SELECT * FROM events ORDER BY id"))
    assert [e["kind"] for e in events] == ["run_started", "edit", "edit", "run_ended"]
    prev = "0" * 64
    for e in events:
        assert e["prev_hash"] == prev and e["hash"] == event_hash(e)
        prev = e["hash"]
    assert reports[0].edit_id == edits[0]["id"]


def test_store_refuses_foreign_and_corrupt_files(tmp_path):
    import sqlite3

    from kedsl.errors import StoreError

    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    data = foreign.read_bytes()
    with pytest.raises(StoreError, match="did not create"):
        Store.open(foreign)
    assert foreign.read_bytes() == data

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        Store.open(junk)
    assert junk.read_bytes() == b"\x00\x01garbage" * 100

    with pytest.raises(StoreError, match="no kedsl database"):
        Store.open(tmp_path / "missing.db", create=False)


def test_lineage_links_runs_by_fingerprint(tmp_path):
    store = Store.open(tmp_path / "k.db")
    a = store.begin_run(fingerprint_before="f0")
    store.end_run(a, "ok", fingerprint_after="f1")
    b = store.begin_run(fingerprint_before="f1")
    assert store.db["runs"].get(b)["parent_run"] == a


def test_a_method_that_fails_half_way_leaves_no_trace(tiny_llama, registry, tmp_path):
    before = tiny_llama.fingerprint()
    ex = Executor(tiny_llama, registry, cache_dir=tmp_path, says_now_tokens=0)
    edit = _edit()
    edit.method, edit.given_params = "broken", {}
    with pytest.raises(RuntimeError, match="half-way"):
        ex.run([edit])
    assert tiny_llama.fingerprint() == before


def _script(tmp_path, name: str, edits: str) -> str:
    p = tmp_path / f"{name}.ke"
    p.write_text(f'model "tiny";\nrelation near "{{}} is near";\n{edits}\n')
    return str(p)


def test_script_with_failed_expectation_saves_what_a_script_without_that_edit_saves(tiny_tokenizer, registry, tmp_path):
    """Issue 4's acceptance: a failed expectation leaves no trace in the saved model."""
    import json

    from conftest import make_tiny_llama

    from kedsl import api

    keep = 'edit "Paris" near -> "Rome" using shift(layer=2, amount=1.0);'
    failing = 'edit "Louvre" near -> "Rome" using shift(layer=1, amount=2.0) expect unmoved;'
    with_fail = _script(tmp_path, "with", keep + "\n" + failing)
    without = _script(tmp_path, "without", keep)
    prints = []
    for script, out in ((with_fail, "a"), (without, "b")):
        report = api.apply(
            script, db=tmp_path / "k.db", out=tmp_path / out, model=make_tiny_llama(tiny_tokenizer), registry=registry
        )
        prints.append(json.loads((tmp_path / out / "kedsl.json").read_text())["fingerprint"])
        if script == with_fail:
            assert [r.status for r in report.edits] == ["applied", "rolled_back"]
            assert report.status == "expectations_failed"
    assert prints[0] == prints[1]
    assert prints[0] != make_tiny_llama(tiny_tokenizer).fingerprint()  # the kept edit is really there
