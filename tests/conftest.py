"""Shared fixtures: tiny random-init models and a tokenizer trained in-process (built by
the conformance kit, :mod:`kedsl.plugin.testing`, which plugin authors use too).

Nothing here downloads anything. Torch and transformers are imported inside the fixtures
so that tests of the torch-free parts (language, registry) never load them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# A fixed statistics corpus for the tiny models (see fixtures/README.md)
STATS_CORPUS = str(Path(__file__).parent / "fixtures" / "tiny_stats_corpus.txt")


def knowedit_data_dir(root: Path) -> Path:
    """A KnowEdit data folder under ``root``: the real ZsRE and Sanitation slices (records
    0-2) with a SPLITS.json (ZsRE: tune 0, held out 1-2; Sanitation: all held out)."""
    import json
    import shutil

    real = Path(__file__).parent / "fixtures" / "real"
    files = {"knowedit/ZsRE-test-all.json": "knowedit_zsre_0-2.json", "knowedit/trivia_qa_test.json": "knowedit_sanitation_0-2.json"}
    for target, fixture in files.items():
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(real / fixture, root / target)
    splits = {"knowedit/ZsRE-test-all.json": {"tune": [0], "heldout": [1, 2]}, "knowedit/trivia_qa_test.json": {"heldout": "all"}}
    (root / "SPLITS.json").write_text(json.dumps(splits))
    return root


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (~400 tokens) trained on the conformance kit's corpus;
    fast, with offsets."""
    from kedsl.plugin.testing import tiny_tokenizer as train

    return train()


def make_tiny_llama(tokenizer, seed: int = 0, layers: int = 4, hidden: int = 64, intermediate: int = 128):
    from kedsl.plugin.testing import tiny_llama

    return tiny_llama(tokenizer, seed=seed, layers=layers, hidden=hidden, intermediate=intermediate)


def make_tiny_gpt2(tokenizer, seed: int = 0, layers: int = 4, hidden: int = 64):
    from kedsl.plugin.testing import tiny_gpt2

    return tiny_gpt2(tokenizer, seed=seed, layers=layers, hidden=hidden)


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    """A fresh random-init 4-layer LLaMA (hidden 64) wrapped in a LoadedModel."""
    return make_tiny_llama(tiny_tokenizer)


@pytest.fixture
def tiny_gpt2(tiny_tokenizer):
    """A fresh random-init 4-layer GPT-2 (hidden 64, Conv1D) wrapped in a LoadedModel."""
    return make_tiny_gpt2(tiny_tokenizer)


@pytest.fixture
def tiny_gemma3(tiny_tokenizer):
    """A fresh random-init 4-layer Gemma 3 (four norms, scaled tied embeddings, a sliding
    window of 8 on layers 0 and 2)."""
    from kedsl.plugin.testing import tiny_gemma3

    return tiny_gemma3(tiny_tokenizer)


@pytest.fixture
def tiny_qwen2(tiny_tokenizer):
    """A fresh random-init 4-layer Qwen2 (q/k/v biases, tied embeddings)."""
    from kedsl.plugin.testing import tiny_qwen2

    return tiny_qwen2(tiny_tokenizer)


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model (SmolLM2-135M-Instruct), loaded once per session."""
    from kedsl.model.loading import load_model

    return load_model("smollm2-135m", {})


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Statistics/model caches go to a per-session temp dir unless a test sets its own,
    except the converted default model, which is expensive: it stays in the user cache."""
    if "KEDSL_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("KEDSL_STATS_DIR", str(tmp_path_factory.getbasetemp() / "kedsl-stats"))


def sharpen(model):
    """Scale a random-init model's output head so it has a definite argmax (edits on a
    flat distribution would pass or fail by noise)."""
    import torch

    with torch.no_grad():
        model.model.get_output_embeddings().weight.mul_(20)
    return model


def method_params(plugin, name: str, fast: dict, **over):
    """``name``'s resolved parameters from ``plugin`` alone: ``fast`` settings for tiny
    models, overridden by ``over``."""
    from kedsl.registry.params import resolve_params
    from kedsl.registry import Registry

    spec = Registry(plugins=[plugin], entry_points=False).method(name)
    return resolve_params(spec.params, {**fast, **over})
