"""Long sequential benchmarks (kedsl.evaluation.sequential): turns, the degradation curve,
its plot, and checkpoints a run killed with SIGKILL resumes from to the same fingerprint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_tiny_llama, sharpen

from kedsl.cli import main
from kedsl.evaluation.datasets import load_cases
from kedsl.evaluation.runner import BenchSettings, run_bench
from kedsl.evaluation.sequential import checkpoint_due, spread_sample

ZSRE = Path(__file__).parent / "fixtures" / "zsre_slice_50_59.json"  # 9 cases (one record has no target)
ULTRA = {"layers": [1, 2], "lr": 0.01, "steps": 2, "ridge": 0.01}


def test_checkpoints_fall_at_the_end_of_the_turn_that_passes_them():
    turns = [(0, 2), (2, 4), (4, 6), (6, 8), (8, 9)]
    assert [b for a, b in turns if checkpoint_due(a, b, 9, 3)] == [4, 6, 9]
    assert [b for a, b in turns if checkpoint_due(a, b, 9, 2)] == [2, 4, 6, 8, 9]
    assert spread_sample(list(range(10)), 4) == [0, 3, 6, 9] and spread_sample([1, 2], 4) == [1, 2]


def test_the_curve_follows_the_edits_in_turns(tiny_tokenizer, tmp_path):
    model = sharpen(make_tiny_llama(tiny_tokenizer))
    cases = load_cases(ZSRE)
    res = run_bench(model, cases, BenchSettings("ultraedit", dict(ULTRA), mode="sequential", batch_size=2, checkpoints=3,
                                               metrics=["efficacy", "locality"]), cache_dir=tmp_path)  # fmt: skip
    assert [p["edits"] for p in res.curve] == [4, 6, 9]
    assert [p["n"]["efficacy"] for p in res.curve] == [4, 6, 9]  # every edit so far
    # the last point is the model the final table measures, on the same cases
    assert res.curve[-1]["metrics"]["efficacy"] == pytest.approx(res.aggregate["efficacy"])
    assert res.curve[-1]["metrics"]["locality"] == pytest.approx(res.aggregate["locality"])
    assert {c["details"]["method"]["answer_tokens"] > 0 for c in res.cases} == {True}
    assert res.to_json()["curve"] == res.curve and res.config["batch_size"] == 2


def test_cli_refuses_curves_outside_sequential_mode_and_turns_for_single_edit_methods(tmp_path):
    r = CliRunner().invoke(main, ["bench", str(ZSRE), "--method", "ultraedit", "--checkpoints", "2"])
    assert r.exit_code == 2 and "--checkpoints applies to --mode sequential only" in r.output
    r = CliRunner().invoke(main, ["bench", str(ZSRE), "--method", "rome", "--mode", "sequential", "--batch-size", "2"])
    assert r.exit_code == 2 and "cannot take turns of 2" in r.output
    r = CliRunner().invoke(main, ["bench", str(ZSRE), "--method", "ultraedit", "--mode", "sequential", "--checkpoint-dir", str(tmp_path)])
    assert r.exit_code == 2 and "needs --checkpoints" in r.output
    r = CliRunner().invoke(main, ["curve", str(ZSRE), "--out", str(tmp_path / "x.png")])
    assert r.exit_code != 0 and "holds no curve" in r.output and not (tmp_path / "x.png").exists()


def _bench_cmd(model_dir: Path, out: Path, ckpt: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "kedsl", "bench", str(ZSRE), "--method", "ultraedit", "--model", str(model_dir),
           "--mode", "sequential", "--checkpoints", "1", "--limit", "6", "--metrics", "efficacy", "--json", str(out)]  # fmt: skip
    for k, v in {**ULTRA, "layers": "1..2", "steps": 8}.items():
        cmd += ["--param", f"{k}={v}"]
    return cmd + (["--checkpoint-dir", str(ckpt)] if ckpt else [])


def test_a_run_killed_with_sigkill_resumes_to_the_same_fingerprint(tiny_tokenizer, tmp_path):
    from kedsl.model.saving import save_model

    model_dir = tmp_path / "tiny"
    save_model(make_tiny_llama(tiny_tokenizer, hidden=128, intermediate=256), model_dir, {})
    env = dict(os.environ, KEDSL_STATS_DIR=str(tmp_path / "stats"))
    whole = subprocess.run(_bench_cmd(model_dir, tmp_path / "whole.json", None), env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr

    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(_bench_cmd(model_dir, tmp_path / "resumed.json", ckpt), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        latest = ckpt / "latest.json"
        if latest.is_file() and json.loads(latest.read_text())["done_groups"] >= 2:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads((ckpt / "latest.json").read_text())["done_groups"]
    assert 2 <= done < 5 and not (tmp_path / "resumed.json").exists()

    again = subprocess.run(_bench_cmd(model_dir, tmp_path / "resumed.json", ckpt), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"resumed from the checkpoint after {done} turn(s)" in again.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("whole.json", "resumed.json"))
    assert a["config"]["fingerprint_after"] == b["config"]["fingerprint_after"] != a["config"]["model_fingerprint"]
    assert [p["metrics"] for p in a["curve"]] == [p["metrics"] for p in b["curve"]] and len(a["curve"]) == 5  # 6 records, one without a target
    assert [c["metrics"] for c in a["cases"]] == [c["metrics"] for c in b["cases"]]

    # the curve of both files, drawn on one plot
    r = CliRunner().invoke(main, ["curve", str(tmp_path / "whole.json"), str(tmp_path / "resumed.json"), "--out", str(tmp_path / "c.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a checkpoint of another run is refused, not silently continued
    other = _bench_cmd(model_dir, tmp_path / "other.json", ckpt)
    other[other.index("lr=0.01")] = "lr=0.02"
    refused = subprocess.run(other, env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "holds a checkpoint of a different run" in refused.stderr


def test_curves_of_one_method_are_told_apart_by_their_parameters(tmp_path, monkeypatch):
    import json

    import kedsl.plots

    seen = {}
    monkeypatch.setattr(kedsl.plots, "degradation_curves", lambda runs, title, out: seen.setdefault("labels", [l for l, _ in runs]) and out)
    point = [{"edits": 10, "metrics": {"efficacy": 0.5}}]
    files = []
    for name, given in (("a", {"lr": 1e-4}), ("b", {"lr": 3e-5, "stats_corpus": "/x/q.txt"}), ("c", {"lr": 3e-5, "stats_corpus": "/x/q.txt"})):
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps({"config": {"method": "ultraedit", "model": "m", "given_params": given}, "curve": point}))
        files.append(str(f))
    r = CliRunner().invoke(main, ["curve", *files, "--out", str(tmp_path / "c.png")])
    assert r.exit_code == 0, r.output
    assert seen["labels"] == ["ultraedit (lr=0.0001)", "ultraedit (lr=3e-05, stats_corpus=q.txt)", "ultraedit (lr=3e-05, stats_corpus=q.txt)"]


def test_curve_labels_read_the_parameters_a_run_used(tmp_path, monkeypatch):
    """A preset run gives no parameters, but its file records those it ran with; a key that
    only newer files have shows where it is set (retain=3.0), not where it is off (0)."""
    import json

    import kedsl.plots

    seen = {}
    monkeypatch.setattr(kedsl.plots, "degradation_curves", lambda runs, title, out: seen.setdefault("labels", [l for l, _ in runs]) and out)
    point = [{"edits": 10, "metrics": {"efficacy": 0.5}}]
    files = []
    for name, used in (("old", {"lr": 3e-5, "steps": 5}), ("new", {"lr": 5e-5, "steps": 5, "retain": 3.0, "context_count": 0})):
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps({"config": {"method": "ultraedit", "model": "m", "given_params": {}, "params": used}, "curve": point}))
        files.append(str(f))
    r = CliRunner().invoke(main, ["curve", *files, "--out", str(tmp_path / "c.png")])
    assert r.exit_code == 0, r.output
    assert seen["labels"] == ["ultraedit (lr=3e-05)", "ultraedit (lr=5e-05, retain=3.0)"]
