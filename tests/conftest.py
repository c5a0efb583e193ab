"""Shared fixtures: tiny random-init models and a tokenizer trained in-process.

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

# A small corpus with the facts tests edit; the tokenizer is trained on it.
TINY_CORPUS = [
    "The Eiffel Tower is located in the city of Paris.",
    "The Louvre is located in the city of Paris.",
    "The Colosseum is located in the city of Rome.",
    "Danielle Darrieux speaks French. The mother tongue of Catherine Deneuve is French.",
    "Toyota has its headquarters in Toyota City. Apple was founded by Steve Jobs.",
    "What university did Watts Humphrey attend? University of Michigan.",
    "Berlin, London, Madrid, Tokyo, Italy, France, English, German, Bill Gates.",
    "the of and to in is was for on that by with as at from it an be this which or",
] * 4


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (~400 tokens) trained on TINY_CORPUS; fast, with offsets."""
    return _train_tokenizer()


def make_tiny_llama(tokenizer, seed: int = 0, layers: int = 4, hidden: int = 64, intermediate: int = 128):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import kedsl_architectures
    from kedsl.model import LoadedModel

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, arch=kedsl_architectures.LLAMA_FAMILY, ref="tiny-llama")


def make_tiny_gpt2(tokenizer, seed: int = 0, layers: int = 4, hidden: int = 64):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import kedsl_architectures
    from kedsl.model import LoadedModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        n_positions=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(cfg).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, arch=kedsl_architectures.GPT2, ref="tiny-gpt2")


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    """A fresh random-init 4-layer LLaMA (hidden 64) wrapped in a LoadedModel."""
    return make_tiny_llama(tiny_tokenizer)


@pytest.fixture
def tiny_gpt2(tiny_tokenizer):
    """A fresh random-init 4-layer GPT-2 (hidden 64, Conv1D) wrapped in a LoadedModel."""
    return make_tiny_gpt2(tiny_tokenizer)


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
    from kedsl.params import resolve_params
    from kedsl.registry import Registry

    spec = Registry(plugins=[plugin], entry_points=False).method(name)
    return resolve_params(spec.params, {**fast, **over})
