"""The audit trail end to end, through the real `kedsl` command in subprocesses:
apply -> log/show/export -> verify (with --model) -> revert (exact) -> replay, the model
card, and that the read-only audit commands never import torch.

The helpers at the top (a test method plugin "installed" on PYTHONPATH through a
``.dist-info``, a tiny saved model, scripts) are shared with test_crash_safety.py and
test_store.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parent.parent

# A method plugin for tests: `nudge` adds a seeded random delta to one layer's MLP output
# weight (so edits on different layers touch disjoint weights), optionally sleeping first
# so that crash tests can kill it mid-edit; `moved` is a metric (1.0 when that weight moved).
PLUGIN_SOURCE = '''
from kedsl.plugin import hookimpl
from kedsl.registry.params import Param
from kedsl.registry.specs import MethodSpec, MetricSpec


@hookimpl
def register_methods():
    return [MethodSpec(
        name="nudge",
        implementation="kedsl_audit_testplugin_impl:Nudge",
        doc="adds a seeded random delta to one layer's MLP output weight (tests only)",
        params=(Param("layer", "int", 1, min=0), Param("amount", "float", 0.01), Param("sleep", "float", 0.0, min=0.0)),
        supports_batch=True,
    )]


@hookimpl
def register_metrics():
    return [MetricSpec(
        name="moved",
        implementation="kedsl_audit_testplugin_impl:Moved",
        doc="1.0 when the edited layer's MLP output weight moved (tests only)",
        default_threshold=1.0,
        needs_baseline=True,
        prompt_form="none",
    )]
'''

PLUGIN_IMPL_SOURCE = '''
import hashlib
import time

import torch

from kedsl.evaluation.metric import MetricResult


class Nudge:
    def apply(self, model, requests, params, context):
        if params["sleep"]:
            time.sleep(params["sleep"])
        name = model.mlp_out_weight_name(params["layer"])
        w = model.parameter(name)
        for r in requests:
            seed = int(hashlib.sha256((r.subject + r.target).encode()).hexdigest()[:8], 16) + context.seed
            g = torch.Generator().manual_seed(seed)
            delta = torch.randn(w.shape, generator=g) * params["amount"]
            context.weights.add_(name, delta)
        return context.outcome(layer=params["layer"])


class Moved:
    def baseline(self, model, cases):
        return [{n: p.detach().clone() for n, p in model.model.named_parameters() if "down_proj" in n} for _ in cases]

    def measure(self, model, cases, baselines):
        out = []
        for b in baselines:
            moved = any(not torch.equal(p, b[n]) for n, p in model.model.named_parameters() if n in b)
            out.append(MetricResult(value=1.0 if moved else 0.0, n=1))
        return out
'''


def install_test_plugin(root: Path) -> Path:
    """Write the test plugin as an installed distribution under ``root``; put ``root`` on
    PYTHONPATH (see :func:`kedsl_env`) for subprocesses to load it through entry points."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / "kedsl_audit_testplugin-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kedsl-audit-testplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kedsl]\naudit_test = kedsl_audit_testplugin\n")
    (root / "kedsl_audit_testplugin.py").write_text(PLUGIN_SOURCE)
    (root / "kedsl_audit_testplugin_impl.py").write_text(PLUGIN_IMPL_SOURCE)
    return root


def kedsl_env(plugin_root: Path, db: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_root), env.get("PYTHONPATH")]))
    env["KEDSL_DB"] = str(db)
    env.setdefault("KEDSL_STATS_DIR", str(db.parent / "stats"))
    env.update(extra)
    return env


def kedsl_cmd() -> list[str]:
    return [sys.executable, "-m", "kedsl"]


def run_kedsl(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(kedsl_cmd() + args, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def save_tiny_base(tokenizer, path: Path, **kwargs) -> Path:
    """A tiny random-init LLaMA saved as a plain Hugging Face directory."""
    from conftest import make_tiny_llama

    loaded = make_tiny_llama(tokenizer, **kwargs)
    loaded.model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def script(base: Path, edits: list[tuple[str, int]], out: Path | None = None, sleep: float = 0.0, expect: bool = True) -> str:
    """A .ke script: one `nudge` edit per (subject, layer)."""
    lines = [f'model "{base}";', ""]
    for subject, layer in edits:
        args = f"layer={layer}" + (f", sleep={sleep}" if sleep else "")
        exp = " expect moved" if expect else ""
        lines.append(f'edit prompt "{subject} is located in" subject "{subject}" -> "Rome" using nudge({args}){exp};')
    if out is not None:
        lines += ["", f'save to "{out}";']
    return "\n".join(lines) + "\n"


def fingerprint_of(path: Path) -> str:
    from kedsl.provenance.verify import model_fingerprint

    return model_fingerprint(path)


@pytest.fixture(scope="module")
def audit_setup(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("audit")
    plugin = install_test_plugin(root / "plugin")
    base = save_tiny_base(tiny_tokenizer, root / "base")
    return root, plugin, base


@pytest.fixture
def env(audit_setup, tmp_path):
    _root, plugin, _base = audit_setup
    return kedsl_env(plugin, tmp_path / "audit.db")


# -- the walkthrough: apply, log, show, verify, revert, verify again -----------------------------
def test_apply_revert_is_exact_for_disjoint_edits_and_everything_verifies(audit_setup, env, tmp_path):
    _root, _plugin, base = audit_setup
    db = Path(env["KEDSL_DB"])
    both = tmp_path / "both"
    (tmp_path / "ab.ke").write_text(script(base, [("Eiffel Tower", 1), ("Louvre", 3)], both))
    (tmp_path / "b.ke").write_text(script(base, [("Louvre", 3)], tmp_path / "only-b"))

    proc = run_kedsl(["apply", "ab.ke"], env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_kedsl(["apply", "b.ke"], env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    proc = run_kedsl(["log", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(proc.stdout)
    assert [len(r["edits"]) for r in runs] == [1, 2]  # newest first
    run_ab = runs[1]
    edit_a, edit_b = (e["id"] for e in run_ab["edits"])
    assert [e["status"] for e in run_ab["edits"]] == ["applied", "applied"]
    assert run_ab["edits"][0]["metrics"][0]["metric"] == "moved" and run_ab["edits"][0]["metrics"][0]["passed"] == 1
    assert run_ab["script_text"] == (tmp_path / "ab.ke").read_text()
    assert run_ab["versions"]["plugins"]["audit_test"] == "0.1" and "torch" in run_ab["versions"]
    assert run_ab["argv"][-2:] == ["apply", "ab.ke"] and run_ab["cwd"] == str(tmp_path)

    # The saved directory: kedsl.json and a model card naming the run, edits, fingerprint.
    record = json.loads((both / "kedsl.json").read_text())
    card = (both / "README.md").read_text()
    assert record["provenance"]["run_id"] == run_ab["id"]
    for needle in (run_ab["id"], record["fingerprint"], edit_a, edit_b, "| 1 | moved | 1 | >= 1 | pass |", "library_name: transformers"):
        assert needle in card
    head = record["provenance"]["log_head"]
    assert head["hash"] in card

    proc = run_kedsl(["verify", "--model", str(both)], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"has fingerprint {record['fingerprint']}" in proc.stdout

    # Revert A from the model with A and B: equals the model where only B was applied.
    reverted = tmp_path / "reverted"
    proc = run_kedsl(["revert", edit_a, "--model", str(both), "--out", str(reverted)], env)
    assert proc.returncode == 0, proc.stderr
    assert "restored bit-exactly" in proc.stdout
    fp_reverted = fingerprint_of(reverted)
    assert fp_reverted == fingerprint_of(tmp_path / "only-b") != fingerprint_of(both)

    # The revert is a run in the model's lineage, and everything still verifies.
    history = json.loads(run_kedsl(["log", "--model", str(reverted), "--json"], env).stdout)
    assert [r["kind"] for r in history] == ["revert", "apply"]
    assert history[0]["reverts_edit"] == edit_a and history[0]["parent_run"] == run_ab["id"]
    assert history[0]["fingerprint_after"] == fp_reverted
    proc = run_kedsl(["verify", "--model", str(reverted)], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # show: a run and an edit in full, by id or unique prefix.
    shown = json.loads(run_kedsl(["show", edit_a, "--json"], env).stdout)
    assert shown["type"] == "edit" and shown["params"]["layer"] == 1
    assert list(shown["outcome"]["parameters"]) == ["model.layers.1.mlp.down_proj.weight"]
    shown = json.loads(run_kedsl(["show", run_ab["id"][:10], "--json"], env).stdout)
    assert shown["type"] == "run" and [e["kind"] for e in shown["events"]][:1] == ["run_started"]
    assert "saving" in [e["kind"] for e in shown["events"]]

    # Weights changed outside kedsl: verify --model says so.
    from safetensors.torch import load_file, save_file

    weights = load_file(both / "model.safetensors")
    weights["model.layers.2.mlp.down_proj.weight"][0, 0] += 1e-3
    save_file(weights, both / "model.safetensors", metadata={"format": "pt"})
    proc = run_kedsl(["verify", "--model", str(both)], env)
    assert proc.returncode == 1 and "changed outside kedsl" in proc.stdout
    assert db.exists()


def test_revert_subtracts_when_a_later_edit_touched_the_same_weight(audit_setup, env, tmp_path):
    _root, _plugin, base = audit_setup
    (tmp_path / "s.ke").write_text(script(base, [("Eiffel Tower", 2), ("Louvre", 2)], tmp_path / "both"))
    assert run_kedsl(["apply", "s.ke"], env, cwd=tmp_path).returncode == 0
    (run,) = json.loads(run_kedsl(["log", "--json"], env).stdout)
    first = run["edits"][0]["id"]
    proc = run_kedsl(["revert", first, "--model", str(tmp_path / "both"), "--out", str(tmp_path / "r")], env)
    assert proc.returncode == 0, proc.stderr
    assert "delta subtracted (not bit-exact)" in proc.stdout
    (rev,) = [r for r in json.loads(run_kedsl(["log", "--json"], env).stdout) if r["kind"] == "revert"]
    assert rev["edits"][0]["params"]["modes"] == {"model.layers.2.mlp.down_proj.weight": "subtracted"}


def test_revert_refuses_rolled_back_unknown_and_foreign_edits(audit_setup, env, tmp_path):
    _root, _plugin, base = audit_setup
    # layer 0 with amount 0 never moves: `expect moved` fails and the edit is rolled back.
    text = script(base, [("Louvre", 1)], tmp_path / "m").replace("layer=1)", "layer=1, amount=0.0)")
    (tmp_path / "s.ke").write_text(text)
    proc = run_kedsl(["apply", "s.ke"], env, cwd=tmp_path)
    assert proc.returncode == 1  # the expectation failed
    (run,) = json.loads(run_kedsl(["log", "--json"], env).stdout)
    edit = run["edits"][0]["id"]
    assert run["edits"][0]["status"] == "rolled_back"
    proc = run_kedsl(["revert", edit, "--model", str(tmp_path / "m"), "--out", str(tmp_path / "r")], env)
    assert proc.returncode == 2 and "was rolled_back" in proc.stderr
    proc = run_kedsl(["revert", "run-nope-e0", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "r")], env)
    assert proc.returncode == 2 and "no edit run-nope-e0" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_replay_reproduces_the_recorded_fingerprint(audit_setup, env, tmp_path):
    _root, _plugin, base = audit_setup
    (tmp_path / "s.ke").write_text(script(base, [("Eiffel Tower", 1), ("Colosseum", 2)], tmp_path / "m"))
    assert run_kedsl(["apply", "s.ke", "--seed", "7"], env, cwd=tmp_path).returncode == 0
    (run,) = json.loads(run_kedsl(["log", "--json"], env).stdout)
    assert run["seed"] == 7
    (tmp_path / "s.ke").unlink()  # replay uses the recorded script text, not the file
    proc = run_kedsl(["replay", run["id"], "--out", str(tmp_path / "again")], env)
    assert proc.returncode == 0, proc.stderr
    assert "MATCHES" in proc.stdout
    assert fingerprint_of(tmp_path / "again") == run["fingerprint_after"]
    replayed = json.loads(run_kedsl(["log", "--json"], env).stdout)[0]
    assert replayed["kind"] == "replay" and replayed["replay_of"] == run["id"]
    assert run_kedsl(["verify"], env).returncode == 0


def test_export_formats(audit_setup, env, tmp_path):
    import csv
    import io

    _root, _plugin, base = audit_setup
    (tmp_path / "s.ke").write_text(script(base, [("Eiffel Tower <b>", 1)]))
    assert run_kedsl(["apply", "s.ke"], env, cwd=tmp_path).returncode == 0
    (run,) = json.loads(run_kedsl(["log", "--json"], env).stdout)

    lines = [json.loads(line) for line in run_kedsl(["export"], env).stdout.splitlines()]
    assert lines[0]["type"] == "verification" and lines[0]["ok"] is True
    assert [x["type"] for x in lines].count("edit") == 1 and [x["type"] for x in lines].count("metric") == 1

    rows = list(csv.DictReader(io.StringIO(run_kedsl(["export", "--format", "csv", "--run", run["id"]], env).stdout)))
    assert len(rows) == 1 and rows[0]["subject"] == "Eiffel Tower <b>" and rows[0]["metric"] == "moved"
    assert rows[0]["passed"] == "1" and rows[0]["fingerprint_after"] == run["fingerprint_after"]

    out = tmp_path / "report.html"
    assert run_kedsl(["export", "--format", "html", "-o", str(out)], env).returncode == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "Log verified" in page and run["id"] in page
    assert "Eiffel Tower &lt;b&gt;" in page and "<b>" not in page.replace("<body>", "")  # escaped
    assert "src=" not in page and "href='http" not in page  # self-contained

    proc = run_kedsl(["export", "--run", "run-missing"], env)
    assert proc.returncode == 2 and "no run run-missing" in proc.stderr


@pytest.mark.parametrize("command", [["log"], ["log", "--json"], ["show", "run-x"], ["verify"], ["verify", "--json"],
                                     ["export"], ["export", "--format", "html"], ["export", "--format", "csv"]])
def test_audit_commands_do_not_import_torch(command, tmp_path):
    from kedsl.provenance.store import Store

    db = tmp_path / "k.db"
    facts = tmp_path / "facts.csv"
    facts.write_text("subject,prompt,target\nS,p S,T\n")
    with Store.open(db) as store:
        r = store.begin_run(script_text="x", fingerprint_before="f0")
        sha = store.record_data_file(r, facts.read_bytes(), path="facts.csv", file=str(facts), display="facts.csv",
                                     format="csv", layout=None, rows=1)  # fmt: skip
        store.record_edit(r, 0, "S", {"prompt": "p"}, "m", {}, "applied", 0.1, {}, None, [{"metric": "e", "value": 1.0, "op": ">=", "threshold": 1.0, "passed": 1, "n": 1}],
                          data_sha256=sha, data_row=1)  # fmt: skip
        store.end_run(r, "ok", fingerprint_after="f1")
    facts.write_text("changed")  # verify warns about it, without torch
    proc = run_without_torch(command + ["--db", str(db)])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def run_without_torch(argv: list[str]) -> subprocess.CompletedProcess:
    """Run `kedsl ARGV` in a fresh interpreter that fails if the command imported torch
    (its exit status is not checked: a failing command must stay torch-free too)."""
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['kedsl'] + {argv!r}\n"
        "try:\n    runpy.run_module('kedsl', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_model_card_is_deterministic_and_lists_failures():
    from kedsl.model.card import render_model_card

    record = {
        "fingerprint": "ab" * 32,
        "kedsl_version": "0.1.0",
        "base": {"ref": "smollm2-135m", "source": "embedded"},
        "provenance": {
            "run_id": "run-1",
            "edits": [{"id": "run-1-e0", "subject": "A|B", "prompt": "p", "target": "t", "method": "rome", "status": "applied",
                       "expectations": [{"metric": "locality", "value": 0.5, "op": ">=", "threshold": 0.9, "passed": 0}]}],
        },
    }
    card = render_model_card(record)
    assert card == render_model_card(record)
    assert "| 1 | locality | 0.5 | >= 0.9 | FAIL |" in card and "A\\|B" in card
    assert card.startswith("---\nlibrary_name: transformers\n")


def test_a_consistently_rewritten_log_passes_alone_but_not_against_a_saved_model(tiny_llama, tmp_path):
    """The documented limit: whoever rewrites rows *and* every later hash *and* the anchor
    gets a log that verifies on its own; the head recorded in a saved model catches it."""
    from kedsl.provenance.verify import verify_log, verify_model
    from kedsl.model.saving import save_model
    from kedsl.provenance.store import Store

    db, out = tmp_path / "k.db", tmp_path / "m"
    fp = tiny_llama.fingerprint()
    with Store.open(db) as store:
        run = store.begin_run(fingerprint_before=fp, model_ref="tiny")
        head = store.record_saving(run, out, fp)
        save_model(tiny_llama, out, {"run_id": run, "log_head": {"event": head["count"], "hash": head["hash"]}})
        store.end_run(run, "ok", fingerprint_after=fp, saved_to=str(out))
        assert verify_model(store, out).ok

    def someone_else(kind: str, payload: dict) -> None:
        if kind == "run_started":
            payload["user"] = "someone-else"

    rewrite_history(db, "UPDATE runs SET user = 'someone-else'", someone_else)
    with Store.open(db, readonly=True) as store:
        assert verify_log(store).ok  # the limit, stated in docs/audit.md
        result = verify_model(store, out)
    errors = [f.message for f in result.findings if f.level == "error"]
    assert not result.ok and "rewritten or truncated" in errors[0]


def rewrite_history(db: Path, sql: str, change: Callable[[str, dict], None]) -> None:
    """Rewrite a database the way anyone with write access can: run ``sql`` on the tables,
    ``change(kind, payload)`` each event's payload in place to match, then recompute every
    hash after it and the anchor, so that the chain verifies on its own."""
    import sqlite3

    from kedsl.provenance.store import canonical_json, event_hash

    conn = sqlite3.connect(db)
    conn.execute(sql)
    prev = "0" * 64
    for row in conn.execute("SELECT id, run_id, at, kind, payload FROM events ORDER BY id").fetchall():
        payload = json.loads(row[4])
        change(row[3], payload)
        event = {"id": row[0], "run_id": row[1], "at": row[2], "kind": row[3], "payload": canonical_json(payload), "prev_hash": prev}
        event["hash"] = event_hash(event)
        conn.execute("UPDATE events SET payload = ?, prev_hash = ?, hash = ? WHERE id = ?", [event["payload"], prev, event["hash"], row[0]])
        prev = event["hash"]
    conn.execute("UPDATE kedsl_meta SET value = ? WHERE key = 'head_hash'", [prev])
    conn.commit()
    conn.close()
