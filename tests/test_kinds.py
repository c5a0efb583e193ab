"""insert and erase through the language, for every registered method, on a tiny model:
when `kedsl check` says a script is valid, `kedsl.apply` never stops with a usage error or
a traceback, and the edit changes the model (towards the target, for the methods whose
effect a random tiny model can show: the fine-tuning ones)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import sharpen
from test_conformance import BUILT_IN
from test_mend import HPARAMS as MEND_HPARAMS
from test_serac import HPARAMS as SERAC_HPARAMS

from kedsl import api
from kedsl.lang import check_source
from kedsl.lang.fmt import format_value, quote
from kedsl.registry import Registry
from kedsl.registry.specs import CHANGE_KINDS
from kedsl.toolkit.scoring import teacher_forced

STATEMENTS = {
    "edit": ('edit prompt "The Eiffel Tower is located in the city of" subject "Eiffel Tower" -> "Rome" from "Paris"',
             "The Eiffel Tower is located in the city of", "Rome"),
    "insert": ('insert prompt "What university did Watts Humphrey attend?" subject "Watts Humphrey" -> "Toyota City"',
               "What university did Watts Humphrey attend?", "Toyota City"),
    "erase": ('erase prompt "The Louvre is located in the city of" subject "Louvre" from "Paris"',
              "The Louvre is located in the city of", "I don't know."),
}  # fmt: skip


#: Data and settings for the tiny editors of the trained methods (those of test_mend, test_serac).
FIX = Path(__file__).parent / "fixtures"
TRAIN_DATA = [str(FIX / "zsre_slice_50_59.json"), str(FIX / "real" / "zsre_mend_train_0-2.json")]
TRAINED = {"mend": MEND_HPARAMS, "serac": SERAC_HPARAMS}


@pytest.fixture(scope="module")
def editors(tiny_tokenizer, tmp_path_factory):
    """A tiny editor per trained method, for the sharpened tiny model the tests edit."""
    from conftest import make_tiny_llama

    from kedsl.training.loop import LoopSettings, train

    found = {}
    for method, hparams in TRAINED.items():
        out = tmp_path_factory.mktemp(method) / "editor"
        settings = LoopSettings(batch_size=2, max_steps=10, val_every=5, val_size=3, lr=1e-3)
        train(sharpen(make_tiny_llama(tiny_tokenizer)), Registry(), method, TRAIN_DATA, out, params=hparams, settings=settings)
        found[method] = {"editor": str(out)}
    return found


def _script(tmp_path, method: str, kind: str, params: dict) -> tuple:
    statement, prompt, target = STATEMENTS[kind]
    args = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
    source = f'model "tiny";\n{statement} using {method}({args});\n'
    path = tmp_path / f"{method}-{kind}.ke"
    path.write_text(source)
    return path, source, prompt, target


def test_every_registered_method_is_tried():
    assert set(BUILT_IN) | set(TRAINED) == set(Registry().methods) - {"gradient_step"}  # the example plugin's own test


@pytest.mark.parametrize("kind", CHANGE_KINDS)
@pytest.mark.parametrize("method", sorted(BUILT_IN) + sorted(TRAINED))
def test_a_checked_script_of_every_kind_applies(method, kind, tiny_llama, tmp_path, request):
    registry = Registry()
    params = BUILT_IN[method] if method in BUILT_IN else request.getfixturevalue("editors")[method]
    path, source, prompt, target = _script(tmp_path, method, kind, params)
    script, diags = check_source(source, str(path), registry)
    assert script is not None and not [d for d in diags if d.is_error], [d.message for d in diags]
    model = sharpen(tiny_llama)
    (before,) = teacher_forced(model, [(prompt, target)])
    report = api.apply(path, db=tmp_path / "k.db", model=model, registry=registry, argv=["test"])
    (edit,) = report.edits
    assert report.status == "ok" and edit.status == "applied" and edit.request.kind == kind
    assert edit.request.target == target  # an erasure's target is its refusal
    assert edit.outcome.changes or edit.outcome.attachments
    (after,) = teacher_forced(model, [(prompt, target)])
    assert after.logprob != before.logprob
    if method in ("ft_m", "lora", "adalora", "grace"):  # trained on the target itself
        assert after.logprob > before.logprob + math.log(1.5), (before.logprob, after.logprob)


def test_erase_uses_the_scripts_refusal(tiny_llama, tmp_path):
    path = tmp_path / "refusal.ke"
    path.write_text('model "tiny";\nerase prompt "The Louvre is located in the city of" subject "Louvre" from "Paris" '
                    f'refusal {quote("No comment.")} using ft_m(layer=1, steps=5);\n')  # fmt: skip
    report = api.apply(path, db=tmp_path / "k.db", model=tiny_llama, registry=Registry(), argv=["test"])
    assert report.edits[0].request.target == "No comment." and report.edits[0].request.old == "Paris"


def test_ft_m_unlearning_lowers_the_old_answer_further(tiny_tokenizer):
    from conftest import make_tiny_llama

    from kedsl.editing.outcome import EditContext
    from kedsl.editing.request import EditRequest
    from kedsl.model.journal import WeightJournal
    from kedsl.registry.params import resolve_params

    request = EditRequest(subject="Louvre", prompt="The Louvre is located in the city of", target="I don't know.", old="Paris", kind="erase")
    spec = Registry().method("ft_m")
    old_prob = []
    for unlearn in (0.0, 5.0):
        model = sharpen(make_tiny_llama(tiny_tokenizer))
        params = resolve_params(spec.params, {"layer": 1, "steps": 20, "lr": 5e-3, "unlearn": unlearn, "nll_tol": 0.0,
                                                   "erase_norm_constraint": 0.0})  # the objective alone, unbounded
        spec.load().apply(model, [request], params, EditContext(weights=WeightJournal(model.model), cache_dir=model_dir(), seed=0))
        (s,) = teacher_forced(model, [(request.prompt, "Paris")])
        old_prob.append(s.logprob)
    assert old_prob[1] < old_prob[0] - 1.0, old_prob


def model_dir():
    import tempfile
    from pathlib import Path

    return Path(tempfile.gettempdir())
