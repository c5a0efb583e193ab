"""Models split by accelerate's device maps: every built-in method reads and writes the
weights it edits where they live (two layers offloaded to disk, the rest on the CPU),
gives the fingerprint (and attachments) the unsplit model gives, and undoes exactly; a
revert of a saved model loaded split; the settings' errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import kedsl_ft
import kedsl_memit
import kedsl_rome
from conftest import STATS_CORPUS, make_tiny_llama, method_params
from kedsl.errors import UsageError
from kedsl.plugin.testing import REQUESTS

EDITED = {"rome": [1], "memit": [1, 2], "ft_m": [2]}  # the layers each method writes: offloaded below
PARAMS = {
    "rome": (kedsl_rome, {"layer": 1, "mom2_samples": 700, "stats_corpus": STATS_CORPUS, "context_count": 1, "context_lengths": [4],
                          "v_steps": 6, "bf16": False}),
    "memit": (kedsl_memit, {"layers": [1, 2], "mom2_samples": 700, "stats_corpus": STATS_CORPUS, "mom2_update_weight": 1.0,
                            "context_count": 1, "context_lengths": [4], "v_steps": 6, "bf16": False}),
    "ft_m": (kedsl_ft, {"layer": 2, "steps": 6, "lr": 1e-3}),
}  # fmt: skip


@pytest.fixture(scope="module")
def saved_tiny(tiny_tokenizer, tmp_path_factory):
    from kedsl.model.saving import save_model

    path = tmp_path_factory.mktemp("tiny") / "model"
    save_model(make_tiny_llama(tiny_tokenizer), path, {})
    return path


def _split_map(model_dir: Path) -> dict[str, str]:
    """Every top-level part on the CPU, layers 1 and 2 offloaded to disk."""
    from kedsl.model.loading import load_saved_model

    plain = load_saved_model(model_dir).model
    parts = {f"model.{n}": "cpu" for n, _ in plain.model.named_children() if n != "layers"}
    parts |= {f"model.layers.{i}": "disk" if i in (1, 2) else "cpu" for i in range(len(plain.model.layers))}
    return parts | {n: "cpu" for n, _ in plain.named_children() if n != "model"}


def _edit(model, method: str, cache: Path):
    from kedsl.editing.outcome import EditContext
    from kedsl.model.journal import WeightJournal
    from kedsl.registry import get_registry

    plugin, fast = PARAMS[method]
    impl = get_registry().method(method).load()
    ctx = EditContext(weights=WeightJournal(model.model), cache_dir=cache, seed=0)
    return impl.apply(model, [REQUESTS["edit"]], method_params(plugin, method, fast), ctx)


@pytest.mark.parametrize("method", ["rome", "memit", "ft_m"])
def test_a_model_split_over_cpu_and_disk_edits_like_the_unsplit_one(method, saved_tiny, tmp_path, monkeypatch):
    from kedsl.model.loading import load_model

    results = {}
    for kind, settings in (("unsplit", {}), ("split", {"device_map": json.dumps(_split_map(saved_tiny)), "offload_folder": str(tmp_path / "offload")})):
        monkeypatch.setenv("KEDSL_STATS_DIR", str(tmp_path / f"stats-{kind}"))  # the split model computes its own statistics
        model = load_model(str(saved_tiny), settings)
        names = [model.mlp_out_weight_name(l) for l in EDITED[method]]
        assert all(model.is_offloaded(n) for n in names) == (kind == "split")
        before = model.fingerprint()
        outcome = _edit(model, method, tmp_path)
        assert sorted(outcome.changes) == sorted(names)
        edited = model.fingerprint()
        outcome.undo(model)
        assert model.fingerprint() == before
        outcome.redo(model)  # the edit can be put back where it lives, too
        assert model.fingerprint() == edited
        results[kind] = (before, edited, {n: ch.after for n, ch in outcome.changes.items()})
    assert results["split"][0] == results["unsplit"][0]
    assert results["split"][1] == results["unsplit"][1], f"{method}: the split model's edit differs"
    assert results["split"][1] != results["split"][0]


def test_device_map_settings_are_checked():
    from kedsl.model.loading import resolve_settings

    assert resolve_settings({"device_map": '{"model.layers.0": "disk"}'})["device_map"] == {"model.layers.0": "disk"}
    assert resolve_settings({"max_memory": ["0=10GiB", "cpu=30GiB"]})["max_memory"] == {0: "10GiB", "cpu": "30GiB"}
    with pytest.raises(UsageError, match="unknown device_map `auot`") as exc:
        resolve_settings({"device_map": "auot"})
    assert "did you mean `auto`?" in exc.value.hint
    with pytest.raises(UsageError, match="not DEVICE=SIZE"):
        resolve_settings({"max_memory": "cpu"})



#: The other built-ins, with the conformance kit's fast settings; each edits layers 1-2.
OTHERS = ["alphaedit", "ft_l", "lora", "adalora", "ike", "grace", "ultraedit", "wise"]


def edit_split_and_unsplit(method: str, params: dict, model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Edit the model saved in ``model_dir`` with ``method``, unsplit and split (layers 1-2
    on disk): each undoes and redoes exactly, and both give the same weights and attachments."""
    from kedsl.editing.outcome import EditContext
    from kedsl.model.attachments import attachments_digest
    from kedsl.model.journal import WeightJournal
    from kedsl.model.loading import load_model
    from kedsl.registry import get_registry
    from kedsl.registry.params import resolve_params

    spec = get_registry().method(method)
    impl = spec.load()
    results = {}
    for kind, settings in (("unsplit", {}), ("split", {"device_map": json.dumps(_split_map(model_dir)), "offload_folder": str(tmp_path / "offload")})):
        monkeypatch.setenv("KEDSL_STATS_DIR", str(tmp_path / f"stats-{kind}"))
        model = load_model(str(model_dir), settings)
        before = model.fingerprint()
        ctx = EditContext(weights=WeightJournal(model.model), cache_dir=tmp_path, seed=0)
        outcome = impl.apply(model, [REQUESTS["edit"]], resolve_params(spec.params, params), ctx)
        offloaded = [model.is_offloaded(n) for n in outcome.changes]
        assert any(offloaded) if kind == "split" and offloaded else not any(offloaded)
        edited = (model.fingerprint(), attachments_digest(model))
        outcome.undo(model)
        assert (model.fingerprint(), attachments_digest(model)) == (before, None)
        outcome.redo(model)
        assert (model.fingerprint(), attachments_digest(model)) == edited
        results[kind] = (before, edited)
    assert results["split"] == results["unsplit"], f"{method}: the split model's edit differs"
    assert results["split"][1] != (results["split"][0], None)


@pytest.mark.parametrize("method", OTHERS)
def test_every_other_built_in_edits_a_split_model_like_the_unsplit_one(method, saved_tiny, tmp_path, monkeypatch):
    from test_conformance import BUILT_IN

    edit_split_and_unsplit(method, BUILT_IN[method], saved_tiny, tmp_path, monkeypatch)
