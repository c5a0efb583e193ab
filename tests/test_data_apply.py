"""`edits from` applied: the same weights as the written edits (MEMIT in a batch, ROME one
at a time, on a tiny LLaMA), `plan`, `apply --report` and its summary, nothing recorded
for a bad file, and the audit trail (the data file's digest and kept content, each edit's
row, `log`/`show`, `verify` warning about a changed or deleted file, `replay` from the
kept content)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import sharpen

import kedsl_architectures
import kedsl_memit
import kedsl_metrics
import kedsl_relations
import kedsl_rome
from kedsl import api
from kedsl.cli import main
from kedsl.lang import ScriptError
from kedsl.registry import Registry
from test_audit import install_test_plugin, kedsl_env, run_kedsl, save_tiny_base
from test_memit import FAST as MEMIT_FAST
from test_rome import FAST as ROME_FAST

FACTS = [
    {"subject": "Paris", "relation": "near", "prompt": "", "target": "University", "old": ""},
    {"subject": "Danielle Darrieux", "relation": "mother_tongue", "prompt": "", "target": "English", "old": "French"},
    {"subject": "Toyota", "relation": "", "prompt": "The headquarters of Toyota", "target": "Paris", "old": ""},
    {"subject": "the Colosseum", "relation": "", "prompt": "The city of the Colosseum", "target": "French", "old": ""},
]
WRITTEN = [
    'edit "Paris" near -> "University"',
    'edit "Danielle Darrieux" mother_tongue -> "English" from "French"',
    'edit prompt "The headquarters of Toyota" subject "Toyota" -> "Paris"',
    'edit prompt "The city of the Colosseum" subject "the Colosseum" -> "French"',
]
HEAD = 'model "tiny";\non_fail keep;\nrelation near "The city of {}";\n'


def write_facts(path: Path, rows: list[dict] = FACTS) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _args(fast: dict, skip: str) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in fast.items() if k != skip)


METHODS = {
    "memit": f"memit(layers=1..2, {_args(MEMIT_FAST, 'layers')})",
    "rome": f"rome(layer=1, {_args(ROME_FAST, 'layer')})",
}


def scripts(tmp_path: Path, method: str) -> tuple[Path, Path]:
    """The same facts as a data file and as written edits: in one batch for MEMIT, one by
    one for ROME."""
    call = METHODS[method]
    write_facts(tmp_path / "facts.csv")
    if method == "memit":
        data = HEAD + f'batch using {call} {{\n    edits from "facts.csv" expect efficacy;\n}}\n'
        written = HEAD + f"batch using {call} {{\n" + "".join(f"    {w} expect efficacy;\n" for w in WRITTEN) + "}\n"
    else:
        data = HEAD + f'edits from "facts.csv" using {call} expect efficacy;\n'
        written = HEAD + "".join(f"{w} using {call} expect efficacy;\n" for w in WRITTEN)
    (tmp_path / "data.ke").write_text(data)
    (tmp_path / "written.ke").write_text(written)
    return tmp_path / "data.ke", tmp_path / "written.ke"


@pytest.mark.parametrize("method", ["memit", "rome"])
def test_a_data_file_gives_the_weights_of_the_written_edits(method, tiny_tokenizer, tmp_path):
    from conftest import make_tiny_llama

    registry = Registry(plugins=[kedsl_memit, kedsl_rome, kedsl_architectures, kedsl_metrics, kedsl_relations], entry_points=False)
    data, written = scripts(tmp_path, method)
    reports = {}
    for script in (data, written):
        model = sharpen(make_tiny_llama(tiny_tokenizer))
        base = model.fingerprint()
        reports[script.stem] = api.apply(str(script), db=tmp_path / f"{script.stem}.db", model=model, registry=registry)
    a, b = reports["data"], reports["written"]
    assert a.fingerprint_after == b.fingerprint_after != base
    assert [r.status for r in a.edits] == [r.status for r in b.edits] == ["applied"] * 4
    assert [x.value for r in a.edits for x in r.expectations] == [x.value for r in b.edits for x in r.expectations]
    assert [r.row for r in a.edits] == [1, 2, 3, 4] and [r.row for r in b.edits] == [None] * 4
    assert [r.request for r in a.edits] == [r.request for r in b.edits]


def test_plan_shows_the_row_count_the_first_rows_and_the_parameters(tiny_llama, tmp_path):
    registry = Registry(plugins=[kedsl_rome, kedsl_metrics, kedsl_relations], entry_points=False)
    rows = [{"subject": f"City {i}", "prompt": f"The city of City {i}", "target": "Paris"} for i in range(1, 9)]
    path = write_facts(tmp_path / "facts.csv", rows)
    script = tmp_path / "p.ke"
    script.write_text('model "tiny";\nrelation near "The city of {}";\nedit "Louvre" near -> "Rome" using rome(layer=2);\n'
                      'edits from "facts.csv" using rome(layer=1, v_steps=3);\n')  # fmt: skip
    before = tiny_llama.fingerprint()
    report = api.plan_report(script, model=tiny_llama, registry=registry)
    assert tiny_llama.fingerprint() == before
    (d,) = report["data"]
    assert (d["rows"], d["shown"], d["line"], d["format"]) == (8, api.scripts.PLAN_ROWS_SHOWN, 4, "csv")
    assert d["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and d["params"]["v_steps"] == 3
    assert d["params"]["layer"] == 1 and d["method"] == "rome"
    assert report["total_edits"] == 9
    assert [(e["row"], e["subject"]) for e in report["edits"]] == [(None, "Louvre")] + [(i, f"City {i}") for i in range(1, 6)]
    assert all("says" in e for e in report["edits"])

    from kedsl.model.saving import save_model

    save_model(tiny_llama, tmp_path / "tiny", {})
    script.write_text(script.read_text().replace('model "tiny"', f'model "{tmp_path / "tiny"}"'))
    r = CliRunner().invoke(main, ["plan", str(script)])
    assert r.exit_code == 0, r.output
    assert "9 edit(s) (8 of them rows of data files), nothing changed" in r.output
    assert f"data {tmp_path / 'facts.csv'} (line 4): 8 rows, csv, sha256 {d['sha256'][:16]}" in r.output
    assert "v_steps=3" in r.output and f"{tmp_path / 'facts.csv'} row 5: 'City 5' -> 'Paris'" in r.output
    assert "row 6:" not in r.output


def test_a_bad_data_file_records_and_saves_nothing(tmp_path):
    write_facts(tmp_path / "facts.csv", FACTS[:3] + [dict(FACTS[3], prompt="Where is it?")])
    script = tmp_path / "s.ke"
    script.write_text(HEAD + 'edits from "facts.csv" using rome;\nsave to "out";\n')
    db = tmp_path / "k.db"
    with pytest.raises(ScriptError, match=r"facts\.csv:4:prompt: subject \"the Colosseum\" does not occur in the prompt"):
        api.apply(str(script), db=db)
    r = CliRunner().invoke(main, ["apply", str(script), "--db", str(db)])
    assert r.exit_code == 2 and "facts.csv:4:prompt: error: subject" in r.output
    assert not db.exists() and not (tmp_path / "out").exists()


def test_version_2_store_is_migrated_and_keeps_verifying(tmp_path):
    import sqlite_utils

    from kedsl.provenance import schema
    from kedsl.provenance.store import Store
    from kedsl.provenance.verify import verify_log

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    old = sqlite_utils.Database(conn)
    schema._migrate_v1(old)
    schema._migrate_v2(old)
    conn.execute("PRAGMA user_version = 2")
    old["kedsl_meta"].insert({"key": "created", "value": "0"})
    conn.close()
    with Store.open(db, readonly=True) as store:  # read-only: not migrated, still readable
        assert store.data_files("run-x") == [] and store.data_file_rows() == []
    with Store.open(db) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 3
        run = store.begin_run(fingerprint_before="f")
        sha = store.record_data_file(run, b"subject,prompt,target\nA,Where is A?,B\n", path="f.csv", file=str(tmp_path / "f.csv"),
                                     display="f.csv", format="csv", layout=None, rows=1)  # fmt: skip
        store.record_data_file(run, b"subject,prompt,target\nA,Where is A?,B\n", path="g.csv", file=str(tmp_path / "g.csv"),
                               display="g.csv", format="csv", layout=None, rows=1)  # fmt: skip
        store.record_edit(run, 0, "A", {"prompt": "Where is A?"}, "m", {}, "applied", 0.1, {}, None, [], data_sha256=sha, data_row=1)
        store.end_run(run, "ok")
        assert [p.name for p in store.blob_dir.iterdir()] == [f"{sha}.data"]  # one blob per distinct content
        assert store.data_blob(sha).read_bytes() == b"subject,prompt,target\nA,Where is A?,B\n"
    with Store.open(db, readonly=True) as store:
        result = verify_log(store)
    assert result.ok
    assert sorted(f.level for f in result.findings) == ["warning", "warning"]  # neither file is on disk
    conn = sqlite3.connect(db)
    conn.execute("UPDATE data_files SET rows = 7 WHERE path = 'g.csv'")
    conn.commit()
    conn.close()
    with Store.open(db, readonly=True) as store:
        result = verify_log(store)
    assert not result.ok and any("`rows` in the data_files table differs from the log" in f.message for f in result.findings)


# -- the audit trail, through the real command --------------------------------------------------
@pytest.fixture(scope="module")
def audited(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("data-audit")
    return install_test_plugin(root / "plugin"), save_tiny_base(tiny_tokenizer, root / "base")


def test_the_audit_trail_of_a_data_file(audited, tmp_path):
    plugin, base = audited
    env = kedsl_env(plugin, tmp_path / "audit.db")
    rows = [{"subject": s, "prompt": f"{s} is located in", "target": "Rome"} for s in ("Eiffel Tower", "Louvre", "Colosseum")]
    facts = write_facts(tmp_path / "facts.csv", rows)
    digest = hashlib.sha256(facts.read_bytes()).hexdigest()
    (tmp_path / "s.ke").write_text(
        f'model "{base}";\nedits from "facts.csv" using nudge(layer=1) expect moved;\n'
        'edit prompt "Big Ben is located in" subject "Big Ben" -> "Paris" using nudge(layer=2) expect moved;\n'
        f'save to "{tmp_path / "out"}";\n'
    )
    proc = run_kedsl(["apply", "s.ke", "--report", "report.csv"], env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 row(s) of facts.csv (line 2), one by one, using nudge" in proc.stderr and "rows 3/3 (100%)" in proc.stderr
    assert "facts.csv (line 2): 3 rows, 3 applied" in proc.stdout and "Eiffel Tower" not in proc.stdout
    summary = next(line for line in proc.stdout.splitlines() if line.startswith("moved"))
    assert summary.split()[:4] == ["moved", "3", "3", "0"]
    report = list(csv.DictReader(io.StringIO((tmp_path / "report.csv").read_text())))
    assert [(r["row"], r["subject"], r["metric"], r["passed"]) for r in report] == [
        ("1", "Eiffel Tower", "moved", "1"), ("2", "Louvre", "moved", "1"), ("3", "Colosseum", "moved", "1"), ("", "Big Ben", "moved", "1")]
    assert report[0]["data_file"] == "facts.csv" and report[3]["line"] == "3"

    (run,) = json.loads(run_kedsl(["log", "--json"], env).stdout)
    (data,) = run["data_files"]
    assert (data["path"], data["sha256"], data["size"], data["rows"], data["format"]) == (
        "facts.csv", digest, facts.stat().st_size, 3, "csv")
    assert [(e["data_row"], e["data_sha256"]) for e in run["edits"]] == [(1, digest), (2, digest), (3, digest), (None, None)]
    blob = Path(env["KEDSL_DB"] + ".blobs") / f"{digest}.data"
    assert blob.read_bytes() == facts.read_bytes()
    saved = json.loads((tmp_path / "out" / "kedsl.json").read_text())["provenance"]
    assert saved["data_files"][0]["sha256"] == digest and saved["edits"][1]["data_row"] == 2
    text = run_kedsl(["log"], env).stdout
    assert f"data    facts.csv  3 rows, {facts.stat().st_size} bytes, sha256 {digest[:16]}" in text
    assert "'Louvre' -> 'Rome'  (facts.csv row 2)" in text
    louvre = run["edits"][1]["id"]
    shown = json.loads(run_kedsl(["show", louvre, "--json"], env).stdout)
    assert shown["data_row"] == 2 and shown["data_file"]["sha256"] == digest
    assert f"data file            facts.csv row 2 (sha256 {digest}" in run_kedsl(["show", louvre], env).stdout
    assert "data file            facts.csv: 3 rows, csv" in run_kedsl(["show", run["id"]], env).stdout

    proc = run_kedsl(["verify"], env)
    assert proc.returncode == 0 and "warning" not in proc.stdout
    # The file changes after the run: verify warns (and still passes); replay uses what the run read.
    write_facts(facts, [dict(r, target="Madrid") for r in rows])
    proc = run_kedsl(["verify"], env)
    assert proc.returncode == 0, proc.stdout
    assert f"warning: data file {facts} changed after run {run['id']}" in proc.stdout
    for attempt in ("changed", "deleted"):
        proc = run_kedsl(["replay", run["id"], "--out", str(tmp_path / f"again-{attempt}")], env)
        assert proc.returncode == 0, proc.stderr
        assert "MATCHES" in proc.stdout
        facts.unlink(missing_ok=True)
    proc = run_kedsl(["verify"], env)
    assert proc.returncode == 0 and f"warning: data file {facts} (read by run {run['id']}) is gone" in proc.stdout
    replays = [r for r in json.loads(run_kedsl(["log", "--json"], env).stdout) if r["kind"] == "replay"]
    assert len(replays) == 2 and all(r["data_files"][0]["sha256"] == digest for r in replays)
    assert all(r["fingerprint_after"] == run["fingerprint_after"] for r in replays)


def test_a_large_batch_reports_its_target_search_as_it_goes(tiny_tokenizer, tmp_path, capsys):
    from conftest import make_tiny_llama

    from kedsl.cli import _PrintReporter

    registry = Registry(plugins=[kedsl_memit, kedsl_architectures, kedsl_metrics, kedsl_relations], entry_points=False)
    write_facts(tmp_path / "facts.csv")
    call = f"memit(layers=1..2, v_batch=3, {_args(MEMIT_FAST, 'layers')})"  # 4 facts: two search chunks
    (tmp_path / "data.ke").write_text(HEAD + f'batch using {call} {{\n    edits from "facts.csv";\n}}\n')

    from kedsl.editing.request import EditRequest

    FACT_REQUEST = EditRequest(subject="Paris", prompt="The city of Paris", target="University")

    class Heard(_PrintReporter):
        said: list[str] = []

        def method_progress(self, message: str) -> None:
            self.said.append(message)
            super().method_progress(message)

    reporter = Heard()
    reporter.tty, reporter.LINE_EVERY_S = False, 0.0  # every line, as a log file gets them
    api.apply(str(tmp_path / "data.ke"), db=tmp_path / "k.db", model=sharpen(make_tiny_llama(tiny_tokenizer)), registry=registry, reporter=reporter)
    assert [m for m in reporter.said if "target search" in m] == ["memit: target search for 4 facts", "memit: target search: 3/4 facts", "memit: target search: 4/4 facts"]
    err = capsys.readouterr().err
    assert "  memit: target search: 3/4 facts  elapsed " in err and "ETA" in err.split("3/4 facts")[1].splitlines()[0]
    assert "  memit: target search: 4/4 facts  elapsed " in err
    quiet = Heard()
    quiet.tty = False  # the default interval: a method that has worked less than 10 s prints nothing
    quiet.edit_started(0, 1, type("Edit", (), {"row": None, "request": FACT_REQUEST, "method": "memit"})())
    capsys.readouterr()
    quiet.method_progress("memit: target search: 3/4 facts")
    assert capsys.readouterr().err == ""
