"""Scale-out over torch.distributed: two real gloo ranks (torch's multiprocessing spawn)
give the one-process benchmark and statistics; rank 0 alone writes; a killed rank fails a
``--workers`` run naming the rank; sequential mode is refused before anything starts."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import REPO, STATS_CORPUS, knowedit_data_dir, make_tiny_llama

ZSRE = Path(__file__).parent / "fixtures" / "zsre_slice_50_59.json"
METRICS = ["efficacy", "generalization", "locality", "pre_efficacy"]
ROME = {"layer": 1, "mom2_samples": 1500, "stats_corpus": STATS_CORPUS, "context_count": 1, "context_lengths": [4], "v_steps": 6,
        "clamp_norm_factor": 1e4, "bf16": False}  # fmt: skip
MEMIT = {"layers": [1, 2], "mom2_samples": 1500, "stats_corpus": STATS_CORPUS, "mom2_update_weight": 1.0, "context_count": 1,
         "context_lengths": [4], "v_steps": 6, "clamp_norm_factor": 1e4, "bf16": False}  # fmt: skip
#: (method, parameters, mode, batch size): 5 cases, so the ranks' shares differ in size
RUNS = [("rome", ROME, "single", 1), ("memit", MEMIT, "batch", 2)]
STATS = [([1, 2], STATS_CORPUS, 700), ([3], "model", 300)]  # (layers, corpus, tokens): a row cut inside; the sampled corpus
SUITE = {"methods": ["ft_m"], "params": {"ft_m": {"layer": 1, "steps": 2}}, "datasets": ["ZsRE"]}


def _suite(model, data_dir, out, ranks=None):
    from kedsl.evaluation.suite import run_suite
    from kedsl.registry import get_registry

    return run_suite(model, get_registry(), "knowedit", SUITE["methods"], data_dir, out, params=SUITE["params"], datasets=SUITE["datasets"],
                     ranks=ranks)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _comparable(result: dict) -> dict:
    """A bench result without what differs between any two runs (timings)."""
    cases = [{k: v for k, v in c.items() if k not in ("seconds", "details")} | {"details": {k: v for k, v in c["details"].items() if k != "method"}}
             for c in result["cases"]]  # fmt: skip
    aggregate = {k: v for k, v in result["aggregate"].items() if k != "seconds_per_edit"}
    return {"cases": cases, "aggregate": aggregate, "edits_digest": result["config"]["edits_digest"]}


def _bench(model, settings, ranks=None):
    from kedsl.evaluation.datasets import load_cases
    from kedsl.evaluation.runner import run_bench
    from kedsl.registry import get_registry

    cases = load_cases(ZSRE, limit=6)  # 5 cases: record 4 has no new target
    return run_bench(model, cases, settings, registry=get_registry(), ranks=ranks)


def _settings(method, params, mode, batch):
    from kedsl.evaluation.runner import BenchSettings

    return BenchSettings(method, dict(params), mode=mode, batch_size=batch, metrics=METRICS)


def _rank(rank: int, world: int, port: int, model_dir: str, shared_stats: str, out: str, threads: int, data_dir: str) -> None:
    """One rank: the statistics (each rank with a stats folder of its own: rank 0's cache
    decides, rank 0 alone writes), then the benchmark runs (a shared, warm stats folder)
    and a suite (into a folder of its own per rank: only rank 0's gets files)."""
    from safetensors.torch import save_file

    from kedsl.distributed import ranks_from_environment
    from kedsl.model.loading import load_saved_model
    from kedsl.toolkit.stats import second_moments

    torch.set_num_threads(threads)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ranks = ranks_from_environment()
    assert ranks is not None and ranks.world == world
    model = load_saved_model(model_dir)
    os.environ["KEDSL_STATS_DIR"] = str(Path(out) / f"stats-rank{rank}")
    for i, (layers, corpus, samples) in enumerate(STATS):
        got = second_moments(model, layers, corpus, samples, ranks=ranks)
        save_file({str(l): t.contiguous() for l, t in got.items()}, str(Path(out) / f"mom2-{i}-rank{rank}.safetensors"))
    os.environ["KEDSL_STATS_DIR"] = shared_stats
    for method, params, mode, batch in RUNS:
        result = _bench(model, _settings(method, params, mode, batch), ranks)
        (Path(out) / f"{method}-rank{rank}.json").write_text(json.dumps(result.to_json()))
    aggregates = _suite(model, data_dir, Path(out) / f"suite-rank{rank}", ranks)
    (Path(out) / f"suite-aggregates-rank{rank}.json").write_text(json.dumps(aggregates))
    ranks.close()


@pytest.fixture(scope="module")
def two_ranks(tiny_tokenizer, tmp_path_factory):
    """One process's results, then the same work on two gloo ranks."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    from kedsl.model.loading import load_saved_model
    from kedsl.model.saving import save_model
    from kedsl.toolkit.stats import second_moments

    root = tmp_path_factory.mktemp("distributed")
    model_dir = root / "tiny"
    save_model(make_tiny_llama(tiny_tokenizer), model_dir, {})
    model = load_saved_model(model_dir)
    shared, alone = root / "stats-shared", root / "stats-alone"
    saved = os.environ.get("KEDSL_STATS_DIR")
    try:
        os.environ["KEDSL_STATS_DIR"] = str(alone)
        one_stats = [second_moments(model, layers, corpus, samples) for layers, corpus, samples in STATS]
        os.environ["KEDSL_STATS_DIR"] = str(shared)  # the edits' statistics, computed once here and read by both ranks
        one_bench = {m: _bench(model, _settings(m, p, mode, b)).to_json() for m, p, mode, b in RUNS}
        data_dir = knowedit_data_dir(root / "data")
        one_suite = _suite(model, data_dir, root / "suite-one")
    finally:
        if saved is None:
            os.environ.pop("KEDSL_STATS_DIR", None)
        else:
            os.environ["KEDSL_STATS_DIR"] = saved
    out = root / "ranks"
    out.mkdir()
    mp.spawn(_rank, args=(2, _free_port(), str(model_dir), str(shared), str(out), torch.get_num_threads(), str(data_dir)), nprocs=2, join=True)
    ranks_stats = [[load_file(str(out / f"mom2-{i}-rank{r}.safetensors")) for i in range(len(STATS))] for r in range(2)]
    ranks_bench = [{m: json.loads((out / f"{m}-rank{r}.json").read_text()) for m, *_ in RUNS} for r in range(2)]
    return {"one_stats": one_stats, "ranks_stats": ranks_stats, "one_bench": one_bench, "ranks_bench": ranks_bench, "out": out, "alone": alone,
            "one_suite": (one_suite, root / "suite-one"), "ranks_suite": [json.loads((out / f"suite-aggregates-rank{r}.json").read_text()) for r in range(2)]}


def test_two_ranks_give_the_one_process_benchmark_in_single_and_batch_mode(two_ranks):
    for method, _, mode, _ in RUNS:
        one = two_ranks["one_bench"][method]
        for rank in range(2):
            got = two_ranks["ranks_bench"][rank][method]
            assert _comparable(got) == _comparable(one), (method, mode, rank)
        assert [c["status"] for c in one["cases"]] == ["measured"] * 5, method
        assert one["config"]["edits_digest"] is not None


def test_statistics_over_two_ranks_match_one_process_and_only_rank_0_writes(two_ranks):
    from safetensors.torch import load_file

    for i, (layers, corpus, samples) in enumerate(STATS):
        for layer in layers:
            one = two_ranks["one_stats"][i][layer]
            for rank in range(2):
                got = two_ranks["ranks_stats"][rank][i][str(layer)]
                torch.testing.assert_close(got, one, rtol=1e-5, atol=1e-6)
    rank0 = sorted(p.name for p in (two_ranks["out"] / "stats-rank0").iterdir())
    # the same cache names as one process, each layer's file once; the sampled corpus too
    assert rank0 == sorted(p.name for p in two_ranks["alone"].iterdir())
    assert sum(name.endswith(".safetensors") for name in rank0) == 3
    assert not (two_ranks["out"] / "stats-rank1").exists() or not any((two_ranks["out"] / "stats-rank1").iterdir())
    for name in rank0:
        if name.endswith(".safetensors"):
            meta = load_file(str(two_ranks["out"] / "stats-rank0" / name))
            assert set(meta) == {"mom2"}


def test_a_suite_over_two_ranks_gives_the_one_process_cells_and_only_rank_0_writes(two_ranks):
    one, one_dir = two_ranks["one_suite"]
    drop = lambda agg: {d: {m: {k: v for k, v in a.items() if k != "seconds_per_edit"} for m, a in by_m.items()} for d, by_m in agg.items()}  # noqa: E731
    assert one["ZsRE"]["ft_m"]["cases"] == 2
    for rank in range(2):
        assert drop(two_ranks["ranks_suite"][rank]) == drop(one)
    written = sorted(str(p.relative_to(two_ranks["out"] / "suite-rank0")) for p in (two_ranks["out"] / "suite-rank0").rglob("*") if p.is_file())
    assert written == sorted(str(p.relative_to(one_dir)) for p in one_dir.rglob("*") if p.is_file())
    assert not (two_ranks["out"] / "suite-rank1").exists()


def test_rank_0_names_a_rank_whose_heartbeat_stopped(monkeypatch):
    import torch.distributed as dist

    from kedsl import distributed
    from kedsl.distributed import RankError, Ranks

    monkeypatch.setattr(distributed, "SILENCE_LIMIT_S", 0.5)
    monkeypatch.setattr(distributed, "HEARTBEAT_S", 0.1)
    ranks = Ranks(rank=0, world=3, store=dist.HashStore(), collective_device=torch.device("cpu"))
    ranks.start_heartbeat()  # rank 0 beats; ranks 1 and 2 did their part, then fell silent
    ranks.add("beat/1", 1)
    ranks.add("beat/2", 1)
    ranks.add("done", 3)
    with pytest.raises(RankError, match="rank 1, 2 of 3 died or stopped answering during the edits") as exc:
        ranks.wait_for_count("done", 5, lambda n: None, "the edits")
    assert exc.value.exit_code == 9
    ranks.close()


def test_sequential_mode_is_refused_before_anything_starts():
    from kedsl.cli import main

    r = CliRunner().invoke(main, ["bench", str(ZSRE), "--method", "rome", "--mode", "sequential", "--workers", "2"])
    assert r.exit_code == 2 and "sequential mode cannot be split across ranks" in r.output and "hint:" in r.output


def test_a_killed_rank_fails_the_run_and_is_named(tiny_tokenizer, tmp_path):
    import psutil

    from kedsl.model.saving import save_model

    model_dir = tmp_path / "tiny"
    save_model(make_tiny_llama(tiny_tokenizer), model_dir, {})
    out = tmp_path / "bench.json"
    env = {**os.environ, "KEDSL_STATS_DIR": str(tmp_path / "stats"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kedsl", "bench", str(ZSRE), "--method", "rome", "--model", str(model_dir), "--limit", "4",
           "--param", "layer=1", "--param", "mom2_update_weight=0", "--param", "v_steps=3", "--param", "context_count=0",
           "--param", "bf16=false", "--metrics", "efficacy", "--json", str(out), "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == "1":
                    child.send_signal(signal.SIGKILL)
                    killed = child.pid
                    break
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert killed is not None, err
    assert proc.returncode == 9, err
    assert "error: rank 1 of 2 failed (killed by SIGKILL)" in err and "nothing was written" in err
    assert not out.exists()
