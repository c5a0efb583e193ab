"""Crash safety, for real: `kedsl apply` processes are killed with SIGKILL at random
moments (loading, editing, recording, and, aimed by watching for the temporary save
directory, during the save). Afterwards the database passes `PRAGMA integrity_check` and
`verify`, no destination holds a half-written model (a destination either does not exist
or holds exactly the weights the log says it should), and rerunning the script succeeds.

Trials run four at a time against one database, so kills also land while other
processes hold or wait for the write lock.
"""
from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from test_audit import install_test_plugin, kedsl_cmd, kedsl_env, run_kedsl, save_tiny_base, script

TRIALS_WHOLE = 4  # kill time uniform over a whole apply (mostly lands while loading)
TRIALS_WORK = 12  # kill time uniform over editing, measuring, recording and saving
TRIALS_SAVE = 8  # kill while the model is being saved (the temporary directory exists)
PARALLEL = 4


class _Apply:
    """A `kedsl apply` subprocess whose stderr is watched for the first edit line."""

    def __init__(self, cmd, env, cwd):
        import threading

        self.started = time.monotonic()
        self.editing_at: float | None = None
        self.editing = threading.Event()
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            if b"] editing " in line and not self.editing.is_set():
                self.editing_at = time.monotonic()
                self.editing.set()
        self.editing.set()  # exited

    def kill_after(self, delay: float) -> bool:
        """SIGKILL after ``delay`` seconds unless it exits first; True if it was killed."""
        try:
            self.proc.wait(timeout=max(0.0, delay))
            return False
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            return True


def _phase(db: Path, pid: int) -> str:
    """What the log shows of a killed process's run: its event kinds in order."""
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT id FROM runs WHERE pid = ? ORDER BY started DESC LIMIT 1", [pid]).fetchone()
        if not row:
            return "before the run began"
        return ",".join(r[0] for r in conn.execute("SELECT kind FROM events WHERE run_id = ? ORDER BY id", [row[0]]))
    finally:
        conn.close()


def _trial(kind: str, cmd, env, cwd, out: Path, delay: float, db: Path) -> dict:
    # Temporary siblings earlier kills left behind are not this trial's save.
    stale = {p.name for p in out.parent.iterdir()}
    a = _Apply(cmd, env, cwd)
    if kind == "whole":
        killed = a.kill_after(delay)
    elif kind == "work":
        a.editing.wait(timeout=240)
        killed = a.kill_after(delay)
    else:  # save: watch for the temporary sibling save_model writes into
        killed = False
        deadline = time.monotonic() + 240
        while a.proc.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(f".{out.name}.tmp-") and p.name not in stale for p in out.parent.iterdir()):
                killed = a.kill_after(delay)
                break
            time.sleep(0.0005)
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()
    return {"kind": kind, "out": out, "killed": killed, "phase": _phase(db, a.proc.pid) if killed else "finished"}


def _check_store_and_destinations(db: Path, outs: list[Path]) -> None:
    from kedsl.provenance.verify import expected_fingerprint, model_fingerprint, verify_log
    from kedsl.provenance.store import Store

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with Store.open(db, create=False, readonly=True) as store:
        result = verify_log(store)
        assert result.ok, [f.message for f in result.findings]
        for out in outs:
            if not out.exists():
                continue
            # A destination that exists is complete and is exactly what the log says.
            assert (out / "kedsl.json").is_file() and (out / "model.safetensors").is_file(), sorted(out.iterdir())
            expected = expected_fingerprint(store, out)
            assert model_fingerprint(out) == expected["fingerprint"] == expected["record"]["fingerprint"]


@pytest.mark.slow
def test_kill_minus_nine_at_random_points(tmp_path, tiny_tokenizer):
    rng = random.Random(20240617)
    plugin = install_test_plugin(tmp_path / "plugin")
    # Big enough that saving takes a measurable moment (~18 MB of weights).
    base = save_tiny_base(tiny_tokenizer, tmp_path / "base", hidden=256, intermediate=1024)
    db = tmp_path / "k.db"
    env = kedsl_env(plugin, db)
    text = script(base, [("Eiffel Tower", 0), ("Louvre", 1), ("Colosseum", 2)], sleep=0.15, expect=True)
    (tmp_path / "s.ke").write_text(text)

    # One undisturbed run to time a whole apply and its part after loading (and to have a
    # complete earlier output, which a killed save must leave intact).
    first = _Apply(kedsl_cmd() + ["apply", "s.ke", "--out", str(tmp_path / "out-0")], env, tmp_path)
    assert first.proc.wait(timeout=300) == 0
    whole = time.monotonic() - first.started
    work = time.monotonic() - first.editing_at
    # Kill times stay within the undisturbed run's span: PARALLEL processes sharing the cores
    # only run slower than it, so every such kill lands before the process would have exited.
    slowdown = 1.0

    trials = [("whole", rng.uniform(0.2, whole * slowdown)) for _ in range(TRIALS_WHOLE)]
    trials += [("work", rng.uniform(0.0, work * slowdown)) for _ in range(TRIALS_WORK)]
    trials += [("save", rng.uniform(0.0, 0.02)) for _ in range(TRIALS_SAVE)]
    rng.shuffle(trials)
    results = []
    for start in range(0, len(trials), PARALLEL):
        batch = trials[start : start + PARALLEL]
        # Destinations are reused across batches (a kill must not spoil an earlier complete
        # output), distinct within one.
        outs = [tmp_path / (f"out-save-{j}" if k == "save" else f"out-{j}") for j, (k, _d) in enumerate(batch)]

        def one(j):
            kind, delay = batch[j]
            cmd = kedsl_cmd() + ["apply", "s.ke", "--out", str(outs[j])]
            return _trial(kind, cmd, env, tmp_path, outs[j], delay, db)

        with ThreadPoolExecutor(PARALLEL) as pool:
            results += list(pool.map(one, range(len(batch))))
        _check_store_and_destinations(db, [r["out"] for r in results])

    import json
    import os

    if os.environ.get("KEDSL_CRASH_STATS"):  # where the kills landed, for the curious
        Path(os.environ["KEDSL_CRASH_STATS"]).write_text(json.dumps([(r["kind"], r["phase"]) for r in results], indent=1))
    killed = [r for r in results if r["killed"]]
    summary = [(r["kind"], r["phase"]) for r in results]
    assert len(killed) >= 20, summary
    # killed during the save: after it was logged, before or after its files were recorded
    assert sum(1 for r in killed if r["phase"].endswith(("saving", "saved_files"))) >= 3, summary
    assert sum(1 for r in killed if r["phase"].endswith("edit")) >= 1, summary  # between edits

    # Rerunning the script succeeds, onto a destination a kill interrupted mid-save too.
    for out in (tmp_path / "out-save-0", tmp_path / "out-1"):
        proc = run_kedsl(["apply", "s.ke", "--out", str(out)], env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        proc = run_kedsl(["verify", "--model", str(out)], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_store_and_destinations(db, [r["out"] for r in results])
    # The killed runs are in the log, marked interrupted by the writers that came after.
    from kedsl.provenance.store import Store

    with Store.open(db, create=False, readonly=True) as store:
        statuses = [r["status"] for r in store.runs()]
    assert statuses.count("ok") >= 3 and "interrupted" in statuses
