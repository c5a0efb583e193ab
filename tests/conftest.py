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

# Under pytest-xdist each worker is one process per core: torch (and every `kedsl`
# subprocess a test starts) then uses one thread, so workers do not oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

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


def edit_script(path, model_ref: str, subject: str, target: str, method: str, fast: dict, expect: str = ""):
    """A one-edit script for ``method`` (its ``fast`` settings, ``layers`` written as a
    range), through the relation "The city of {}"; ``expect`` lines follow it."""
    import json

    args = ", ".join([f"layers={min(fast['layers'])}..{max(fast['layers'])}"] * ("layers" in fast)
                     + [f"{k}={json.dumps(v)}" for k, v in fast.items() if k != "layers"])  # fmt: skip
    path.write_text(
        f'model "{model_ref}";\nrelation near "The city of {{}}";\n'
        f'edit "{subject}" near -> "{target}" using {method}({args});\n{expect}'
    )
    return path


def state_registry(plugin):
    """A registry of ``plugin`` and the built-ins an apply needs (architectures, metrics,
    relations, sources), without entry points."""
    import kedsl_architectures
    import kedsl_metrics
    import kedsl_relations
    import kedsl_sources
    from kedsl.registry import Registry

    return Registry(plugins=[plugin, kedsl_architectures, kedsl_metrics, kedsl_relations, kedsl_sources], entry_points=False)


def check_state_lifecycle(plugin, method: str, fast: dict, tokenizer, tmp_path) -> tuple[dict, dict]:
    """A method's sequential state through ``kedsl apply`` on a tiny LLaMA: saved beside
    the weights and listed in kedsl.json, restored exactly on reload, untouched (weights
    too) by an edit that fails its expectation and is rolled back, and carried on by a
    kept edit. Returns (state after the first edit, state after the last) for the
    method's own checks."""
    import json

    import torch

    from kedsl import api
    from kedsl.model.loading import load_model
    from kedsl.model.saving import STATE_FILE

    registry = state_registry(plugin)
    model = sharpen(make_tiny_llama(tokenizer))
    script = lambda name, subject, target, expect="": str(edit_script(tmp_path / name, "tiny" if name == "a.ke" else "x", subject, target, method, fast, expect))  # noqa: E731
    report = api.apply(script("a.ke", "Paris", "University"), db=tmp_path / "k.db", out=tmp_path / "one", model=model, registry=registry)
    assert [r.status for r in report.edits] == ["applied"]
    saved = {k: v.clone() for k, v in model.method_state[method].items()}
    assert saved and (tmp_path / "one" / STATE_FILE).is_file()
    assert json.loads((tmp_path / "one" / "kedsl.json").read_text())["method_state"]["entries"] == sorted(f"{method}/{k}" for k in saved)

    reloaded = load_model(str(tmp_path / "one"), {}, registry)
    assert sorted(reloaded.method_state[method]) == sorted(saved)
    assert all(torch.equal(reloaded.method_state[method][k], v) for k, v in saved.items())

    fp = reloaded.fingerprint()
    report = api.apply(script("b.ke", "Toyota", "French", "expect efficacy >= 2.0;\n"), db=tmp_path / "k.db", model=reloaded, registry=registry)
    assert [r.status for r in report.edits] == ["rolled_back"]
    assert reloaded.fingerprint() == fp
    assert all(torch.equal(reloaded.method_state[method][k], v) for k, v in saved.items())

    report = api.apply(script("c.ke", "Toyota", "French"), db=tmp_path / "k.db", model=reloaded, registry=registry)
    assert [r.status for r in report.edits] == ["applied"]
    return saved, dict(reloaded.method_state[method])
