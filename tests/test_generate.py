"""Greedy generation: batched equals one-at-a-time, only the continuation, the CLI."""
from __future__ import annotations

import pytest

PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "Apple",
    "The mother tongue of Catherine Deneuve is",
    "Toyota has its headquarters in",
]


def _greedy_by_hand(loaded, prompt: str, n: int) -> str:
    """Argmax one token at a time over the full sequence: the reference for greedy."""
    import torch

    tok = loaded.tokenizer
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(loaded.model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tok.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("make", ["tiny_llama", "tiny_gpt2"])
def test_batched_equals_one_at_a_time(make, request):
    from kedsl.toolkit.generation import generate

    loaded = request.getfixturevalue(make)
    lengths = {len(loaded.tokenizer(p)["input_ids"]) for p in PROMPTS}
    assert len(lengths) > 1  # the batch really needs padding
    batched = generate(loaded, PROMPTS, max_new_tokens=10)
    alone = [generate(loaded, [p], max_new_tokens=10)[0] for p in PROMPTS]
    assert batched == alone
    assert any(batched)  # not all empty
    # and in small batches that split the prompts differently
    assert generate(loaded, PROMPTS, max_new_tokens=10, batch_size=3) == batched


@pytest.mark.parametrize("make", ["tiny_llama", "tiny_gpt2"])
def test_generate_is_greedy_and_returns_only_the_continuation(make, request):
    from kedsl.toolkit.generation import generate

    loaded = request.getfixturevalue(make)
    got = generate(loaded, PROMPTS, max_new_tokens=6)
    assert got == [_greedy_by_hand(loaded, p, 6) for p in PROMPTS]


def test_generate_nothing():
    from kedsl.toolkit.generation import generate

    assert generate(None, []) == []  # type: ignore[arg-type]


def test_cli_generate_on_a_saved_directory(tiny_llama, tmp_path):
    from click.testing import CliRunner

    from kedsl.cli import main
    from kedsl.toolkit.generation import generate

    tiny_llama.model.save_pretrained(tmp_path / "m")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "m")
    result = CliRunner().invoke(main, ["generate", str(tmp_path / "m"), PROMPTS[0], PROMPTS[1], "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output
    expected = generate(tiny_llama, PROMPTS[:2], max_new_tokens=5)
    lines = [line for line in result.stdout.splitlines() if " -> " in line]
    assert lines == [f"{p} -> {c}".replace("\n", "\\n") for p, c in zip(PROMPTS[:2], expected)]


def test_cli_generate_rejects_a_bad_dtype(tmp_path):
    from click.testing import CliRunner

    from kedsl.cli import main

    result = CliRunner().invoke(main, ["generate", str(tmp_path), "hi", "--dtype", "float8"])
    assert result.exit_code == 2
    assert "float8" in result.output


@pytest.mark.smollm2
def test_smollm2_batched_equals_one_at_a_time(smollm2):
    from kedsl.toolkit.generation import generate

    prompts = ["The Eiffel Tower is located in the city of", "The capital of Japan is", "Water is made of"]
    batched = generate(smollm2, prompts, max_new_tokens=8)
    assert batched == [generate(smollm2, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched[0].strip().startswith("Paris")


def test_generate_without_a_pad_token_uses_eos(tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from conftest import make_tiny_gpt2
    from kedsl.toolkit.generation import generate

    tiny_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    tok.pad_token = None
    loaded = make_tiny_gpt2(tok)
    batched = generate(loaded, PROMPTS, max_new_tokens=5)
    assert tok.pad_token == tok.eos_token
    assert batched == [generate(loaded, [p], max_new_tokens=5)[0] for p in PROMPTS]
