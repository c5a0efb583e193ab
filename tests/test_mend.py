"""MEND on tiny models: training lowers the validation edit loss, an edit is exactly what
the editor computes from the gradient factors, a killed training resumes to the same
weights, the editor refuses another base model, and the method passes the conformance kit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama
from test_device_map import edit_split_and_unsplit

from kedsl.editing.outcome import EditContext
from kedsl.editing.request import EditRequest
from kedsl.errors import ModelError
from kedsl.model.journal import WeightJournal
from kedsl.plugin.testing import check_method
from kedsl.registry import Registry
from kedsl.registry.params import resolve_params
from kedsl.training.loop import LoopSettings, train
from kedsl.toolkit import gradients as G
from kedsl_mend import editor as E

FIX = Path(__file__).parent / "fixtures"
DATA = [str(FIX / "zsre_slice_50_59.json"), str(FIX / "real" / "knowedit_zsre_0-2.json"), str(FIX / "real" / "zsre_mend_train_0-2.json")]
HPARAMS = {"rank": 16, "layers": [2, 3]}
EIFFEL = EditRequest(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of", target="Rome")


def quick(steps: int = 20, **over) -> LoopSettings:
    return LoopSettings(**{"batch_size": 2, "max_steps": steps, "val_every": 10, "val_size": 3, "lr": 1e-3, **over})


@pytest.fixture(scope="module")
def trained(tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("mend") / "editor"
    model = make_tiny_llama(tiny_tokenizer)
    editor = train(model, Registry(), "mend", DATA, out, params=HPARAMS, settings=quick(30))
    return out, editor


def test_training_lowers_the_validation_edit_loss(trained):
    out, editor = trained
    losses = [c["val_edit_loss"] for c in editor["curve"]]
    assert editor["curve"][0]["step"] == 0 and len(losses) == 4
    assert losses[-1] < losses[0] - 0.1, losses
    assert (out / "editor.safetensors").is_file() and (out / "curve.png").is_file()
    assert editor["hparams"]["rank"] == 16 and editor["trainer"]["layers"] == [2, 3]
    assert [d["sha256"] for d in editor["data"]] and editor["base_model"]["fingerprint"]


@pytest.mark.parametrize("lr_lr", [None, 0.0])
def test_the_step_sizes_train_at_their_own_rate(tiny_tokenizer, tmp_path, lr_lr):
    from safetensors.torch import load_file

    model = make_tiny_llama(tiny_tokenizer)
    params = {**HPARAMS, **({"lr_lr": lr_lr} if lr_lr is not None else {})}
    train(model, Registry(), "mend", DATA, tmp_path / "e", params=params, settings=quick(3, val_every=3))
    now = load_file(str(tmp_path / "e" / "checkpoint.safetensors"))  # the trained tensors after the last step
    steps = [float(now[f"param/layer.{layer}.lr"]) for layer in HPARAMS["layers"]]
    assert float(now["param/net.128x64.w2"].abs().max()) > 0  # the network trained either way
    if lr_lr == 0.0:
        assert steps == [torch.tensor(1e-4).item()] * 2
    else:  # at the loop's rate (1e-3), three Adam steps move a step size of 1e-4 by far more than itself
        assert all(abs(s - 1e-4) > 1e-4 for s in steps), steps


def test_the_gradient_factors_are_the_weight_gradient(tiny_llama):
    batch = G.encode_answers(tiny_llama, [(EIFFEL.prompt, EIFFEL.target), ("The Louvre is located in the city of", "Paris")])
    factors = E.gradient_factors(tiny_llama, batch, [2])
    x, d = factors[2]
    w = tiny_llama.parameter(tiny_llama.mlp_out_weight_name(2))
    loss = G.answer_nll(tiny_llama.model(input_ids=batch.ids, attention_mask=batch.mask).logits, batch.labels)
    (grad,) = torch.autograd.grad(loss, [w])
    assert torch.allclose(d.T @ x, grad, atol=1e-6, rtol=1e-4)
    assert w.grad is None


def test_a_mend_edit_is_exactly_what_the_editor_computes(trained, tiny_tokenizer):
    out, editor = trained
    model = make_tiny_llama(tiny_tokenizer)
    spec = Registry().method("mend")
    params = resolve_params(spec.params, {"editor": str(out)})
    context = EditContext(weights=WeightJournal(model.model), cache_dir=out, seed=0)
    outcome = spec.load().apply(model, [EIFFEL], params, context)
    from safetensors.torch import load_file

    tensors = load_file(str(out / "editor.safetensors"))
    names = editor["tensors"]
    factors = E.gradient_factors(model_before := make_tiny_llama(tiny_tokenizer), G.encode_answers(model_before, [(EIFFEL.prompt, EIFFEL.target)]), [2, 3])
    expected = E.weight_deltas(model_before, {n: tensors[n] for n in names["parameters"]}, {n: tensors[n] for n in names["buffers"]}, factors)
    assert sorted(outcome.changes) == sorted(expected)
    for name, change in outcome.changes.items():
        assert torch.equal(change.after, change.before + expected[name].detach())
    assert outcome.info["editor_sha256"] == editor["sha256"]


def test_the_editor_is_refused_on_another_base_model(trained, tiny_tokenizer):
    out, _ = trained
    other = make_tiny_llama(tiny_tokenizer, seed=1)
    spec = Registry().method("mend")
    with pytest.raises(ModelError) as e:
        spec.load().apply(other, [EIFFEL], resolve_params(spec.params, {"editor": str(out)}), EditContext(weights=WeightJournal(other.model), cache_dir=out))
    assert "trained for another model" in e.value.message and "kedsl train mend" in e.value.hint and e.value.exit_code == 4


def test_mend_conforms(trained, tmp_path):
    out, _ = trained
    check_method("mend", params={"editor": str(out)}, workdir=tmp_path).assert_ok()


def test_a_changed_editor_file_is_refused(trained, tiny_tokenizer, tmp_path):
    import shutil

    out, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    config = json.loads((copy / "editor.json").read_text())
    config["sha256"] = "0" * 64
    (copy / "editor.json").write_text(json.dumps(config))
    spec = Registry().method("mend")
    model = make_tiny_llama(tiny_tokenizer)
    with pytest.raises(ModelError, match="does not match the SHA-256"):
        spec.load().apply(model, [EIFFEL], resolve_params(spec.params, {"editor": str(copy)}), EditContext(weights=WeightJournal(model.model), cache_dir=copy))


# -- kedsl train through the command line: provenance, resume after kill -9 ---------------------
def _train_command(base: Path, out: Path, db: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "kedsl", "train", "mend", "--model", str(base), "--out", str(out), "--db", str(db),
            "--max-steps", str(steps), "--batch-size", "2", "--val-every", "4", "--val-size", "3", "--lr", "1e-3",
            "--param", "rank=16", "--param", "layers=2..3", *[a for f in DATA for a in ("--data", f)]]  # fmt: skip


@pytest.fixture(scope="module")
def base_dir(tiny_tokenizer, tmp_path_factory):
    base = tmp_path_factory.mktemp("base") / "tiny"
    model = make_tiny_llama(tiny_tokenizer)
    model.model.save_pretrained(base)
    model.tokenizer.save_pretrained(base)
    return base


@pytest.mark.slow
def test_a_killed_training_resumes_to_the_same_editor(base_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole"
    subprocess.run(_train_command(base_dir, whole, tmp_path / "a.db", 12), check=True, env=env, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_command(base_dir, killed, tmp_path / "b.db", 12), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint.safetensors").is_file() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "editor.json").is_file()  # killed before the end
    done = subprocess.run(_train_command(base_dir, killed, tmp_path / "b.db", 12), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resuming at step" in done.stderr
    from safetensors.torch import load_file

    a, b = load_file(str(whole / "editor.safetensors")), load_file(str(killed / "editor.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ja, jb = json.loads((whole / "editor.json").read_text()), json.loads((killed / "editor.json").read_text())
    assert [c["score"] for c in ja["curve"]] == [c["score"] for c in jb["curve"]]
    assert len(jb["train_runs"]) == 2 and ja["identity"] == jb["identity"]  # the killed run and the one that finished


def test_training_is_recorded_and_a_mend_edit_leads_to_it(base_dir, tmp_path):
    from click.testing import CliRunner

    from kedsl.cli import main
    from kedsl.provenance.store import Store

    out, db = tmp_path / "editor", tmp_path / "k.db"
    proc = subprocess.run(_train_command(base_dir, out, db, 4), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    editor = json.loads((out / "editor.json").read_text())
    (run_id,) = editor["train_runs"]
    with Store.open(db) as store:
        run = store.run(run_id)
    spec = json.loads(run["script_text"])
    assert run["kind"] == "train" and run["status"] == "ok" and spec["data"][0]["sha256"] == editor["data"][0]["sha256"]
    script = tmp_path / "e.ke"
    script.write_text(f'model "{base_dir}";\nedit prompt "{EIFFEL.prompt}" subject "Eiffel Tower" -> "Rome" using mend(editor="{out}");\n')
    r = CliRunner().invoke(main, ["apply", str(script), "--db", str(db)])
    assert r.exit_code in (0, 1), r.output
    r = CliRunner().invoke(main, ["log", "--db", str(db), "--json"])
    edit_id = next(e["id"] for run in json.loads(r.output) for e in run["edits"])
    r = CliRunner().invoke(main, ["show", edit_id, "--db", str(db), "--json"])
    shown = json.loads(r.output)
    assert shown["info"]["editor_train_runs"] == [run_id] and shown["info"]["editor_sha256"] == editor["sha256"]


def test_the_python_api_trains_the_same_editor_as_the_command(base_dir, tmp_path):
    import kedsl

    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    proc = subprocess.run(_train_command(base_dir, cli_out, tmp_path / "a.db", 4), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    editor = kedsl.train("mend", model=str(base_dir), data=DATA, out=api_out, db=tmp_path / "b.db", max_steps=4, batch_size=2,
                         val_every=4, val_size=3, lr=1e-3, params={"rank": 16, "layers": [2, 3]})  # fmt: skip
    from safetensors.torch import load_file

    a, b = load_file(str(cli_out / "editor.safetensors")), load_file(str(api_out / "editor.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert editor == json.loads((api_out / "editor.json").read_text())
    assert editor["identity"] == json.loads((cli_out / "editor.json").read_text())["identity"]


def test_mend_edits_a_split_model_like_the_unsplit_one(trained, tiny_tokenizer, tmp_path, monkeypatch):
    from kedsl.model.saving import save_model

    out, _ = trained
    save_model(make_tiny_llama(tiny_tokenizer), tmp_path / "model", {})  # the model the editor was trained on
    edit_split_and_unsplit("mend", {"editor": str(out)}, tmp_path / "model", tmp_path, monkeypatch)
