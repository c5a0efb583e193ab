"""The provenance store: tamper evidence (every single-row change, deletion and reordering
is caught and the row named), bad database files (missing, locked, corrupted, foreign:
clear error, never overwritten), schema migration, and two concurrent `apply` processes.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from kedsl.provenance.verify import verify_log
from kedsl.errors import StoreError
from kedsl.provenance.store import SCHEMA_VERSION, Store

METRIC = {"metric": "efficacy", "value": 1.0, "op": ">=", "threshold": 1.0, "passed": 1, "n": 1, "details": {}}


def _populated(path: Path) -> Path:
    """A store with two runs, three edits (one rolled back), metrics and a save."""
    with Store.open(path) as store:
        a = store.begin_run(script_text="edit ...", script_sha256="s", argv=["kedsl", "apply"], fingerprint_before="f0")
        store.record_edit(a, 0, "Eiffel Tower", {"prompt": "p", "target": "Rome"}, "rome", {"layer": 5}, "applied", 1.5, {}, None, [METRIC])
        store.record_edit(a, 1, "Louvre", {"prompt": "q", "target": "Rome"}, "rome", {"layer": 5}, "rolled_back", 1.2, {}, None,
                          [dict(METRIC, value=0.0, passed=0)])  # fmt: skip
        store.record_saving(a, "/tmp/out", "f1")
        store.end_run(a, "expectations_failed", fingerprint_after="f1", saved_to="/tmp/out")
        b = store.begin_run(script_text="edit ...", fingerprint_before="f1")
        store.record_edit(b, 0, "Colosseum", {"prompt": "r", "target": "Paris"}, "memit", {}, "applied", 2.0, {}, None, [])
        store.end_run(b, "ok", fingerprint_after="f2")
    return path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return _populated(tmp_path_factory.mktemp("store") / "k.db")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


def _verify(path: Path):
    with Store.open(path, create=False, readonly=True) as store:
        return verify_log(store)


def _rows(conn) -> list[tuple]:
    return conn.execute("SELECT id, run_id, at, kind, payload, prev_hash, hash FROM events ORDER BY id").fetchall()


def test_pristine_log_verifies_and_links_lineage(pristine):
    result = _verify(pristine)
    assert result.ok, result.findings
    assert result.events == 8 and result.head["count"] == 8
    with Store.open(pristine, readonly=True) as store:
        runs = store.runs()
    assert runs[0]["parent_run"] == runs[1]["id"]


def _tamper_cases(n: int):
    for i in range(1, n + 1):
        yield "change", i
        yield "delete", i
        if i < n:
            yield "reorder", i


@pytest.mark.parametrize("how,row", list(_tamper_cases(8)))
def test_any_single_event_change_deletion_or_reordering_fails_and_names_the_row(pristine, tmp_path, how, row):
    db = _copy(pristine, tmp_path / "k.db")
    conn = sqlite3.connect(db)
    rows = _rows(conn)
    if how == "change":
        payload = json.loads(rows[row - 1][4])
        payload["tampered"] = True
        conn.execute("UPDATE events SET payload = ? WHERE id = ?", [json.dumps(payload), row])
    elif how == "delete":
        conn.execute("DELETE FROM events WHERE id = ?", [row])
    else:  # swap the contents of rows `row` and `row + 1` (ids stay in place)
        a, b = rows[row - 1], rows[row]
        for target, source in ((a[0], b), (b[0], a)):
            conn.execute("UPDATE events SET run_id=?, at=?, kind=?, payload=?, prev_hash=?, hash=? WHERE id=?", [*source[1:], target])
    conn.commit()
    conn.close()
    result = _verify(db)
    assert not result.ok
    assert result.first_broken_event == row, [f.message for f in result.findings]
    # The command line names it too.
    proc = subprocess.run([sys.executable, "-m", "kedsl", "verify", "--db", str(db)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and f"at event {row}" in proc.stderr and f"event {row}" in proc.stdout


def test_deleting_the_newest_events_is_caught_by_the_anchor(pristine, tmp_path):
    db = _copy(pristine, tmp_path / "k.db")
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM events WHERE id >= 7")
    conn.commit()
    conn.close()
    result = _verify(db)
    assert not result.ok and result.first_broken_event == 7
    assert "newest events were deleted" in result.findings[0].message


@pytest.mark.parametrize(
    "sql,needle",
    [
        ("UPDATE runs SET fingerprint_after = 'forged' WHERE fingerprint_after = 'f2'", "`fingerprint_after`"),
        ("UPDATE edits SET status = 'applied' WHERE status = 'rolled_back'", "`status`"),
        ("UPDATE metric_results SET passed = 1, value = 1.0 WHERE passed = 0", "metric results differ"),
        ("DELETE FROM edits WHERE subject = 'Colosseum'", "deleted from the edits table"),
        ("INSERT INTO runs (id, status) VALUES ('run-forged', 'ok')", "not in the log"),
    ],
)
def test_tables_that_disagree_with_the_log_fail_verification(pristine, tmp_path, sql, needle):
    db = _copy(pristine, tmp_path / "k.db")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute(sql)
    conn.commit()
    conn.close()
    result = _verify(db)
    assert not result.ok and any(needle in f.message for f in result.findings), [f.message for f in result.findings]


def test_changed_or_missing_outcome_blob_fails_verification(tmp_path, tiny_llama):
    from kedsl.model.journal import WeightJournal

    j = WeightJournal(tiny_llama.model)
    name = tiny_llama.mlp_out_weight_name(1)
    j.add_(name, tiny_llama.parameter(name).detach() * 0 + 0.5)
    with Store.open(tmp_path / "k.db") as store:
        sha = store.save_outcome(j.changes())
        run = store.begin_run()
        store.record_edit(run, 0, "S", {}, "m", {}, "applied", 0.0, {}, sha, [])
        store.end_run(run, "ok")
        before, after = store.load_outcome(sha)[name]
        assert float((after - before).mean()) == pytest.approx(0.5)
        blob = store.blob_path(sha)
    assert _verify(tmp_path / "k.db").ok
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    assert "was changed" in _verify(tmp_path / "k.db").findings[0].message
    with Store.open(tmp_path / "k.db") as store, pytest.raises(StoreError, match="changed after it was written"):
        store.load_outcome(sha)
    blob.unlink()
    assert "is missing" in _verify(tmp_path / "k.db").findings[0].message


# -- bad database files --------------------------------------------------------------------------
def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kedsl(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kedsl", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})  # fmt: skip


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    rng = random.Random(5)
    corrupt = tmp_path / "random.db"
    corrupt.write_bytes(bytes(rng.randrange(256) for _ in range(8192)))
    # An SQLite header followed by garbage: passes the header check, fails in SQLite.
    half = tmp_path / "garbled.db"
    half.write_bytes(b"SQLite format 3\x00" + bytes(rng.randrange(256) for _ in range(8192)))
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers VALUES (1, 'x')")
    conn.commit()
    conn.close()
    return {"random bytes": corrupt, "garbled SQLite": half, "foreign": foreign}


@pytest.mark.parametrize("command", [["log"], ["verify"], ["export"], ["show", "run-x"]])
def test_bad_database_files_get_a_clear_error_and_are_never_written(tmp_path, command):
    for label, path in _bad_files(tmp_path).items():
        digest = _digest(path)
        proc = _kedsl([*command, "--db", str(path)])
        assert proc.returncode == 5, (label, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
        assert ("did not create" in proc.stderr) if label == "foreign" else ("not" in proc.stderr and "database" in proc.stderr)
        assert _digest(path) == digest, label
        assert not Path(str(path) + "-wal").exists()
    missing = tmp_path / "missing.db"
    proc = _kedsl([*command, "--db", str(missing)])
    assert proc.returncode == 5 and "no kedsl database" in proc.stderr and not missing.exists()


def test_apply_refuses_bad_database_before_loading_the_model(tmp_path):
    (tmp_path / "s.ke").write_text('model "smollm2-135m";\nedit "Eiffel Tower" located_in -> "Rome" using rome;\n')
    for label, path in _bad_files(tmp_path).items():
        digest = _digest(path)
        proc = _kedsl(["apply", str(tmp_path / "s.ke"), "--db", str(path)])
        assert proc.returncode == 5, (label, proc.stderr)
        assert "error: " in proc.stderr and "Traceback" not in proc.stderr
        assert _digest(path) == digest, label


def test_locked_database_is_a_clear_error_after_the_busy_timeout(tmp_path):
    db = _populated(tmp_path / "k.db")
    digest = _digest(db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO kedsl_meta VALUES ('lock-test', '1')")
    try:
        for command in (["log"], ["verify"]):
            proc = _kedsl([*command, "--db", str(db)], KEDSL_BUSY_TIMEOUT="0.5")
            assert proc.returncode == 5, proc.stderr
            assert "is locked by another process" in proc.stderr and "KEDSL_BUSY_TIMEOUT" in proc.stderr
        with pytest.raises(StoreError, match="locked"):
            os.environ["KEDSL_BUSY_TIMEOUT"] = "0.2"
            try:
                with Store.open(db) as store:
                    store.begin_run()
            finally:
                del os.environ["KEDSL_BUSY_TIMEOUT"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert _digest(db) == digest
    assert _verify(db).ok


def test_a_writer_blocks_other_writers_not_readers(tmp_path, monkeypatch):
    db = _populated(tmp_path / "k.db")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        monkeypatch.setenv("KEDSL_BUSY_TIMEOUT", "0.2")
        with Store.open(db) as store, pytest.raises(StoreError, match="locked"):
            store.begin_run()
        assert _verify(db).ok  # reading works meanwhile
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_bad_busy_timeout_value_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KEDSL_BUSY_TIMEOUT", "soon")
    with pytest.raises(StoreError, match="KEDSL_BUSY_TIMEOUT"):
        Store.open(tmp_path / "k.db")


def test_readonly_open_never_writes(pristine, tmp_path):
    db = _copy(pristine, tmp_path / "k.db")
    digest = _digest(db)
    with Store.open(db, readonly=True) as store:
        assert store.runs()
        with pytest.raises(RuntimeError, match="read-only"):
            store.begin_run()
    assert _digest(db) == digest


def test_version_1_database_is_migrated_with_its_anchor(tmp_path):
    from kedsl.provenance import schema

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    import sqlite_utils

    old = sqlite_utils.Database(conn)
    schema._migrate_v1(old)
    conn.execute("PRAGMA user_version = 1")
    old["kedsl_meta"].insert({"key": "created", "value": "0"})
    conn.close()
    with Store.open(db) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        run = store.begin_run(fingerprint_before="f")
        store.end_run(run, "ok")
        assert store.run(run)["kind"] == "apply"
    assert _verify(db).ok


def test_newer_schema_is_refused(tmp_path):
    db = _populated(tmp_path / "k.db")
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this kedsl"):
        Store.open(db)


def test_runs_of_dead_processes_are_marked_interrupted_by_the_next_writer(tmp_path):
    db = tmp_path / "k.db"
    code = (
        "import os, sys\nfrom kedsl.provenance.store import Store\n"
        f"s = Store.open({str(db)!r})\nprint(s.begin_run(fingerprint_before='f0'))\nsys.stdout.flush()\nos._exit(0)\n"
    )
    dead_run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert _verify(db).ok  # an unfinished run is not a broken log
    with Store.open(db) as store:
        assert store.run(dead_run)["status"] == "running"
        store.begin_run()
        assert store.run(dead_run)["status"] == "interrupted"
        assert [e["kind"] for e in store.events(dead_run)] == ["run_started", "run_ended"]
    assert _verify(db).ok


# -- two writers at once --------------------------------------------------------------------------
def test_two_apply_processes_on_one_database_both_complete(tmp_path, tiny_tokenizer):
    from test_audit import install_test_plugin, kedsl_cmd, kedsl_env, save_tiny_base, script

    plugin = install_test_plugin(tmp_path / "plugin")
    base = save_tiny_base(tiny_tokenizer, tmp_path / "base")
    db = tmp_path / "k.db"
    env = kedsl_env(plugin, db)
    # Many small edits each, slow enough (6 x 0.3 s) that the two processes' runs overlap
    # even when one starts seconds after the other (CI saw 0.05 s per edit miss by 0.35 s).
    subjects = ["Eiffel Tower", "Louvre", "Colosseum", "Toyota", "Apple", "Berlin"]
    for name in ("a", "b"):
        (tmp_path / f"{name}.ke").write_text(script(base, [(f"{s} {name}", i % 4) for i, s in enumerate(subjects)], tmp_path / f"out-{name}", sleep=0.3))
    procs = [subprocess.Popen(kedsl_cmd() + ["apply", f"{n}.ke"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in ("a", "b")]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    with Store.open(db, readonly=True) as store:
        runs = store.runs()
        assert len(runs) == 2 and {r["status"] for r in runs} == {"ok"}
        for r in runs:
            edits = store.edits(r["id"])
            assert len(edits) == 6 and all(e["status"] == "applied" for e in edits)
            assert all(len(store.metric_results(e["id"])) == 1 for e in edits)
        started = sorted((r["started"], r["ended"]) for r in runs)
        events = store.events()
    assert verify_log(Store.open(db, readonly=True)).ok
    assert len(events) == 2 * (1 + 6 + 1 + 1 + 1)  # started, the edits, saving, saved_files, ended
    # They really overlapped: the second run started before the first ended.
    assert started[1][0] < started[0][1]
