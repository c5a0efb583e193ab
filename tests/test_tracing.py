"""Causal tracing and `kedsl locate` (tiny in-process models): the invariants that make a
trace mean what it says."""
from __future__ import annotations

import json

import pytest
import torch

from kedsl.toolkit import activations as act
from kedsl.toolkit import tracing
from kedsl.toolkit.tokens import subject_token_span

PROMPT = "The mother tongue of Danielle Darrieux is"
SUBJECT = "Danielle Darrieux"


def _answer_prob(model, ids, answer):
    logits = model.model(input_ids=torch.tensor([ids])).logits[0, -1]
    return float(torch.softmax(logits.float(), -1)[answer])


def _noise(model, n_subj, scale=1.0, samples=1):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(samples, n_subj, model.hidden_size, generator=gen) * scale


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@torch.no_grad()
def test_restoring_every_position_recovers_the_clean_probability_exactly(fixture, request):
    model = request.getfixturevalue(fixture)
    ids, span = subject_token_span(model.tokenizer, PROMPT, SUBJECT)
    answer = 7
    clean = _answer_prob(model, ids, answer)
    noise = _noise(model, len(span), 5.0)
    with act.trace(model, [model.arch.embed, f"{model.arch.layers}.0"], inputs=False, outputs=True) as rec:
        model.model(input_ids=torch.tensor([ids]))
    every = list(range(len(ids)))
    with tracing.corrupt_subject(model, noise, list(span)):
        corrupted = _answer_prob(model, ids, answer)
        with act.replace_at(model, model.arch.embed, [0] * len(ids), every, rec.outputs[model.arch.embed][0]):
            at_embeddings = _answer_prob(model, ids, answer)
        with act.replace_at(model, f"{model.arch.layers}.0", [0] * len(ids), every, rec.outputs[f"{model.arch.layers}.0"][0]):
            at_first_block = _answer_prob(model, ids, answer)
    assert corrupted != clean  # the noise did something
    assert at_embeddings == clean and at_first_block == clean


@torch.no_grad()
def test_corruption_touches_the_subject_tokens_and_nothing_else(tiny_llama):
    model = tiny_llama
    ids, span = subject_token_span(model.tokenizer, "Toyota has its headquarters in Toyota City", "Toyota City")
    with act.trace(model, [model.arch.embed], inputs=False, outputs=True) as rec:
        model.model(input_ids=torch.tensor([ids]))
    clean = rec.outputs[model.arch.embed][0]
    # the noise hook first, so the recording hook sees what the rest of the model sees
    with tracing.corrupt_subject(model, _noise(model, len(span)), list(span)):
        with act.trace(model, [model.arch.embed], inputs=False, outputs=True) as rec:
            model.model(input_ids=torch.tensor([ids]))
    noised = rec.outputs[model.arch.embed][0]
    changed = (noised - clean).abs().amax(-1) > 0
    assert changed.nonzero().flatten().tolist() == list(span)
    assert span[0] > 0  # the first "Toyota" is not the subject occurrence traced


@torch.no_grad()
def test_noise_scale_is_three_standard_deviations_of_the_subject_embeddings(tiny_gpt2):
    model = tiny_gpt2
    facts = [(PROMPT, SUBJECT), ("Apple was founded by Steve Jobs", "Steve Jobs")]
    rows = []
    emb = model.model.get_input_embeddings().weight
    for prompt, subject in facts:
        ids, span = subject_token_span(model.tokenizer, prompt, subject)
        rows.append(emb[[ids[i] for i in span]])
    expected = 3 * float(torch.cat(rows).std())
    assert tracing.noise_scale(model, facts) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["hidden", "mlp", "attn"])
def test_trace_axes_and_the_cells_restoring_nothing(tiny_llama, kind):
    model = tiny_llama
    res = tracing.causal_trace(model, PROMPT, SUBJECT, kind=kind, samples=3, window=2, bf16=False)  # exact: no bf16 rounding
    ids, span = subject_token_span(model.tokenizer, PROMPT, SUBJECT)
    assert res.tokens == [model.tokenizer.decode([i]) for i in ids]
    assert res.subject_tokens == list(span)
    assert len(res.scores) == len(ids) and all(len(r) == model.num_layers for r in res.scores)
    # before the subject, clean and corrupted states are the same: restoring is a no-op
    for t in range(span[0]):
        assert res.scores[t] == [res.corrupted_prob] * model.num_layers
    # the last layer's hidden state at the last token carries the whole clean prediction
    if kind == "hidden":
        assert res.scores[-1][-1] == pytest.approx(res.clean_prob, abs=1e-6)
    json.dumps(res.as_json())


def test_batched_restorations_equal_one_cell_per_pass(tiny_gpt2):
    a = tracing.causal_trace(tiny_gpt2, PROMPT, SUBJECT, kind="mlp", samples=2, window=3, chunk_rows=256)
    b = tracing.causal_trace(tiny_gpt2, PROMPT, SUBJECT, kind="mlp", samples=2, window=3, chunk_rows=2)
    torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), atol=1e-6, rtol=1e-5)


def test_window_is_centred_and_cut_at_the_ends():
    assert list(tracing.window_layers(0, 10, 30)) == list(range(0, 5))
    assert list(tracing.window_layers(15, 10, 30)) == list(range(10, 20))
    assert list(tracing.window_layers(29, 10, 30)) == list(range(24, 30))
    assert list(tracing.window_layers(3, 1, 30)) == [3]


def test_cli_locate_writes_heatmaps_and_numbers(tiny_llama, tmp_path):
    from click.testing import CliRunner

    from kedsl.cli import main

    tiny_llama.model.save_pretrained(tmp_path / "m")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "m")
    out = tmp_path / "trace"
    result = CliRunner().invoke(
        main, ["locate", SUBJECT, "--prompt", PROMPT, "--model", str(tmp_path / "m"), "--samples", "2", "--out", str(out), "--exact"]
    )
    assert result.exit_code == 0, result.output
    assert "strongest" in result.output
    for kind in ("hidden", "mlp", "attn"):
        png = out / f"trace_{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "trace.json").read_text())
    assert [t["kind"] for t in data["traces"]] == ["hidden", "mlp", "attn"]
    assert len(data["traces"][0]["effects"][0]) == tiny_llama.num_layers


def test_cli_locate_average_over_a_dataset(tiny_llama, tmp_path):
    """Facts the model does not answer are dropped and counted; the average has one value
    per layer. The tiny model's greedy answers are taken as the attributes, so it knows them."""
    from click.testing import CliRunner

    from kedsl.cli import main
    from kedsl.toolkit.generation import generate

    prompts = [("The mother tongue of Danielle Darrieux is", "Danielle Darrieux"), ("Apple was founded by Steve Jobs and", "Steve Jobs")]
    answers = generate(tiny_llama, [p for p, _ in prompts], max_new_tokens=2)
    records = [{"subject": s, "prompt": p, "attribute": a.strip()} for (p, s), a in zip(prompts, answers) if a.strip()]
    records.append({"subject": "Toyota", "prompt": "Toyota has its headquarters in", "attribute": "zzzz-never"})
    (tmp_path / "known.json").write_text(json.dumps(records))
    tiny_llama.model.save_pretrained(tmp_path / "m")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "m")
    out = tmp_path / "avg"
    result = CliRunner().invoke(
        main, ["locate", "--dataset", str(tmp_path / "known.json"), "--model", str(tmp_path / "m"), "--samples", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "average_trace.json").read_text())
    assert data["tried"] == len(records) and data["kept"] == len(records) - 1
    assert set(data["effects"]) == {"mlp", "attn"} and all(len(v) == tiny_llama.num_layers for v in data["effects"].values())
    assert (out / "average_trace.png").read_bytes()[:4] == b"\x89PNG"
