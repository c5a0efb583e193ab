"""save_model: plain Hugging Face output, provenance, atomic replacement, determinism."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kedsl.errors import UsageError


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.mark.parametrize("make", ["tiny_llama", "tiny_gpt2"])
def test_saved_directory_loads_with_plain_transformers(make, request, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kedsl.model.saving import save_model

    loaded = request.getfixturevalue(make)
    out = save_model(loaded, tmp_path / "edited", {"script": "edit.ke", "run_id": 7})
    assert out == tmp_path / "edited"
    assert (out / "model.safetensors").is_file()

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    text = "The Eiffel Tower is located in the city of"
    assert tok(text)["input_ids"] == loaded.tokenizer(text)["input_ids"]
    ids = tok(text, return_tensors="pt")
    torch.testing.assert_close(model(**ids).logits, loaded.model(**ids).logits, rtol=0, atol=0)

    record = json.loads((out / "kedsl.json").read_text())
    assert record["provenance"] == {"script": "edit.ke", "run_id": 7}
    assert record["fingerprint"] == loaded.fingerprint()
    import kedsl

    assert record["kedsl_version"] == kedsl.__version__
    assert _leftovers(tmp_path, "edited") == []


def test_saving_the_same_weights_twice_is_byte_identical(tiny_llama, tmp_path):
    from kedsl.model.saving import save_model

    a = save_model(tiny_llama, tmp_path / "a", {"run": 1})
    first = (a / "model.safetensors").read_bytes()
    b = save_model(tiny_llama, tmp_path / "b", {"run": 1})
    assert (b / "model.safetensors").read_bytes() == first
    # and again into the same place (the replace path)
    save_model(tiny_llama, tmp_path / "a", {"run": 1})
    assert (a / "model.safetensors").read_bytes() == first
    assert _tree(a) == _tree(b)


def test_resave_replaces_a_previous_kedsl_output(tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from conftest import make_tiny_llama
    from kedsl.model.saving import save_model

    first, second = make_tiny_llama(tiny_tokenizer, seed=0), make_tiny_llama(tiny_tokenizer, seed=1)
    out = tmp_path / "out"
    save_model(first, out, {"n": 1})
    (out / "stale-extra-file.txt").write_text("from the earlier output")
    save_model(second, out, {"n": 2})
    assert json.loads((out / "kedsl.json").read_text())["provenance"] == {"n": 2}
    assert not (out / "stale-extra-file.txt").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    from kedsl.model.fingerprint import fingerprint_state_dict

    assert fingerprint_state_dict(reloaded.state_dict()) == fingerprint_state_dict(second.model.state_dict())
    assert _leftovers(tmp_path, "out") == []


def test_refuses_a_foreign_non_empty_directory(tiny_llama, tmp_path):
    from kedsl.model.saving import save_model

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("important")
    with pytest.raises(UsageError, match="did not write") as exc:
        save_model(tiny_llama, out, {})
    assert exc.value.hint
    assert _tree(out) == {"notes.txt": b"important"}
    assert _leftovers(tmp_path, "mine") == []

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        save_model(tiny_llama, a_file, {})


def test_fills_an_empty_directory(tiny_llama, tmp_path):
    from kedsl.model.saving import save_model

    (tmp_path / "empty").mkdir()
    save_model(tiny_llama, tmp_path / "empty", {})
    assert (tmp_path / "empty" / "kedsl.json").is_file()


@pytest.mark.parametrize("existing", [False, True])
def test_failure_mid_save_leaves_out_dir_unchanged(existing, tiny_tokenizer, tmp_path, monkeypatch):
    from conftest import make_tiny_llama
    from kedsl.model.saving import save_model

    out = tmp_path / "out"
    if existing:
        save_model(make_tiny_llama(tiny_tokenizer, seed=0), out, {"n": 1})
    before = _tree(out) if existing else None

    edited = make_tiny_llama(tiny_tokenizer, seed=1)

    def crash(save_directory, *args, **kwargs):
        Path(save_directory, "model.safetensors").write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(edited.model, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(edited, out, {"n": 2})
    if existing:
        assert _tree(out) == before
    else:
        assert not out.exists()
    assert _leftovers(tmp_path, "out") == []


def test_a_save_clears_what_a_killed_save_left_behind(tiny_llama, tmp_path):
    """Siblings of dead writers go (and a missing output caught between the two renames
    comes back); a live writer's sibling stays."""
    import os
    import subprocess
    import sys

    from kedsl.model.saving import MARKER, clear_stale_siblings, save_model

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    out = tmp_path / "edited"
    save_model(tiny_llama, out, {"run": 1})
    first = _tree(out)
    # a killed save: its temporary folder, and a killed replace: the old output moved aside
    (tmp_path / f".edited.tmp-{dead}-abc").mkdir()
    (tmp_path / f".edited.tmp-{dead}-abc" / "model.safetensors").write_bytes(b"partial")
    live = tmp_path / f".edited.tmp-{os.getpid()}-xyz"
    live.mkdir()
    os.rename(out, tmp_path / f".edited.old-{dead}-def")
    assert not out.exists()

    touched = clear_stale_siblings(out)
    assert {p.name for p in touched} == {f".edited.tmp-{dead}-abc", f".edited.old-{dead}-def"}
    assert _tree(out) == first and (out / MARKER).is_file()  # the old output is back
    assert _leftovers(tmp_path, "edited") == [live.name]  # a running writer is left alone
    live.rmdir()
    save_model(tiny_llama, out, {"run": 2})
    assert _leftovers(tmp_path, "edited") == []
