"""The example third-party plugin (examples/kedsl-example-plugin), loaded in-process."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from kedsl.evaluation.cases import EvalCase
from kedsl.registry import Registry

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kedsl-example-plugin"


@pytest.fixture
def example_plugin(monkeypatch):
    # Not installed: import the package from its source folder (CI installs it too).
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import kedsl_example_plugin

    return kedsl_example_plugin


def _hand_log_prob(model, prompt: str, target: str) -> float:
    """sum_i log P(t_i | p, t_<i), one unpadded sequence, one position at a time."""
    import torch

    tok = model.tokenizer
    prompt_ids = tok(prompt)["input_ids"]
    full_ids = tok(prompt + " " + target)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids  # the tiny BPE splits at the space
    total = 0.0
    with torch.no_grad():
        for i in range(len(prompt_ids), len(full_ids)):
            logits = model.model(input_ids=torch.tensor([full_ids[:i]])).logits[0, -1]
            total += float(torch.log_softmax(logits.double(), dim=-1)[full_ids[i]])
    return total


def test_registry_loads_the_plugin_in_process(example_plugin):
    reg = Registry(plugins=[example_plugin], entry_points=False)
    spec = reg.metric("target_probability")
    assert spec.default_threshold is None and spec.higher_is_better and not spec.needs_baseline
    assert reg.plugins[0].provides == {"metrics": ["target_probability"], "methods": ["gradient_step"]}


def test_package_imports_without_torch():
    code = (
        "import sys; sys.path.insert(0, %r); import kedsl_example_plugin; "
        "print('torch' in sys.modules)" % str(EXAMPLE)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_target_probability_equals_hand_computed_product(example_plugin, tiny_llama):
    metric = Registry(plugins=[example_plugin], entry_points=False).metric("target_probability").load()
    cases = [
        EvalCase(
            subject="Eiffel Tower",
            target="Rome",
            rewrite=[("The Eiffel Tower is located in the city of", "Rome"), ("The Eiffel Tower is in", None)],
        ),
        # A shorter prompt with a multi-token target: padding must not change its score.
        EvalCase(subject="Toyota", target="Bill Gates", rewrite=[("Toyota was founded by", "Bill Gates")]),
        EvalCase(subject="Nobody", target="Paris"),  # no edit prompts
    ]
    metric.batch_size = 2  # two batches, so the batching path is exercised
    results = metric.measure(tiny_llama, cases, None)
    assert len(results) == 3

    expected_first = [
        math.exp(_hand_log_prob(tiny_llama, "The Eiffel Tower is located in the city of", "Rome")),
        math.exp(_hand_log_prob(tiny_llama, "The Eiffel Tower is in", "Rome")),
    ]
    assert results[0].n == 2
    assert results[0].value == pytest.approx(sum(expected_first) / 2, rel=1e-4)
    assert [d["probability"] for d in results[0].details["prompts"]] == pytest.approx(expected_first, rel=1e-4)

    lp = _hand_log_prob(tiny_llama, "Toyota was founded by", "Bill Gates")
    assert len(tiny_llama.tokenizer(" Bill Gates")["input_ids"]) > 1  # really multi-token
    assert results[1].n == 1 and results[1].value == pytest.approx(math.exp(lp), rel=1e-4)
    assert 0.0 < results[1].value < 1.0

    assert results[2].value is None and results[2].n == 0
