"""Reverting one member of a batch (MEMIT, AlphaEdit; any method whose spec supports
batches): the batch is recomputed without the member from the recorded inputs, and the
result is bit-identical to a fresh run of the same script without that edit. On tiny
in-process models; bench/batch_revert_smollm2.py does the same on SmolLM2."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import make_tiny_llama, sharpen
from test_alphaedit import FAST as ALPHAEDIT_FAST
from test_memit import FAST as MEMIT_FAST

import kedsl_alphaedit
import kedsl_architectures
import kedsl_memit
import kedsl_metrics
import kedsl_relations
import kedsl_sources
from kedsl.errors import UsageError
from kedsl.registry import Registry

MEMBERS = [("Paris", "University"), ("Toyota", "French"), ("Berlin", "Tokyo")]


def _registry() -> Registry:
    plugins = [kedsl_memit, kedsl_alphaedit, kedsl_architectures, kedsl_metrics, kedsl_relations, kedsl_sources]
    return Registry(plugins=plugins, entry_points=False)


def _script(base, method: str, fast: dict, members: list[tuple[str, str]], single: tuple[str, str] | None = None) -> str:
    args = ", ".join(f"{k}={json.dumps(v)}" for k, v in fast.items() if k != "layers")
    lines = [f'model "{base}";', 'relation near "The city of {}";']
    if single:  # an edit before the batch: the batch is computed on top of it
        lines.append(f'edit "{single[0]}" near -> "{single[1]}" using {method}(layers=1..2, {args});')
    lines.append(f"batch using {method}(layers=1..2, {args}) {{")
    lines += [f'  edit "{s}" near -> "{t}";' for s, t in members]
    lines.append("}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("batch-revert") / "base"
    model = sharpen(make_tiny_llama(tiny_tokenizer))
    model.model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("method, fast", [("memit", MEMIT_FAST), ("alphaedit", ALPHAEDIT_FAST)])
def test_reverting_a_batch_member_equals_a_fresh_run_without_it(base, tmp_path, method, fast):
    from kedsl import api
    from kedsl.api.history import revert
    from kedsl.provenance.store import Store
    from kedsl.provenance.verify import model_fingerprint, verify_log, verify_model

    registry, db = _registry(), tmp_path / "k.db"
    single = ("Rome", "Lisbon")
    full = tmp_path / "full.ke"
    full.write_text(_script(base, method, fast, MEMBERS, single))
    report = api.apply(full, db=db, out=tmp_path / "full", registry=registry)
    member = report.edits[2]  # Toyota, the batch's second member
    assert member.request.subject == "Toyota" and member.status == "applied"

    without = tmp_path / "without.ke"
    without.write_text(_script(base, method, fast, [m for m in MEMBERS if m[0] != "Toyota"], single))
    fresh = api.apply(without, db=tmp_path / "fresh.db", out=tmp_path / "fresh", registry=registry)

    with Store.open(db) as store:
        res = revert(store, member.edit_id, tmp_path / "full", tmp_path / "reverted", registry=registry, argv=["test"])
        assert res["recomputed"] and sorted(res["batch"]) == sorted(r.edit_id for r in report.edits[1:] if r is not member)
        run = store.run(res["run_id"])
        assert run["kind"] == "revert" and run["reverts_edit"] == member.edit_id
        assert [e["subject"] for e in store.edits(res["run_id"])] == ["Rome", "Paris", "Berlin"]
    assert res["fingerprint_after"] == fresh.fingerprint_after != report.fingerprint_after
    assert model_fingerprint(tmp_path / "reverted") == model_fingerprint(tmp_path / "fresh")
    if method == "alphaedit":  # the sequential state too (the projection of earlier keys)
        from kedsl.model.saving import STATE_FILE

        assert (tmp_path / "reverted" / STATE_FILE).read_bytes() == (tmp_path / "fresh" / STATE_FILE).read_bytes()
        # The method state is one of the files a save records: a changed one is named.
        changed = tmp_path / "changed"
        shutil.copytree(tmp_path / "reverted", changed)
        data = bytearray((changed / STATE_FILE).read_bytes())
        data[-1] ^= 0x01
        (changed / STATE_FILE).write_bytes(bytes(data))
        with Store.open(db, readonly=True) as store:
            check = verify_model(store, changed)
        assert not check.ok and any(f"{STATE_FILE} was changed" in f.message for f in check.findings)
    with Store.open(db, readonly=True) as store:
        assert verify_log(store).ok and verify_model(store, tmp_path / "reverted").ok

        # A second member, from the recomputed model: its seq is in the shortened script.
        (paris,) = [e for e in store.edits(res["run_id"]) if e["subject"] == "Paris"]
    with Store.open(db) as store:
        res2 = revert(store, paris["id"], tmp_path / "reverted", tmp_path / "reverted2", registry=registry, argv=["test"])
    only = tmp_path / "only.ke"
    only.write_text(_script(base, method, fast, [("Berlin", "Tokyo")], single))
    again = api.apply(only, db=tmp_path / "fresh2.db", out=tmp_path / "fresh2", registry=registry)
    assert res2["fingerprint_after"] == again.fingerprint_after


def test_a_batch_member_is_reverted_only_from_the_directory_its_run_saved(base, tmp_path):
    from kedsl import api
    from kedsl.api.history import revert
    from kedsl.provenance.store import Store

    registry, db = _registry(), tmp_path / "k.db"
    (tmp_path / "a.ke").write_text(_script(base, "memit", MEMIT_FAST, MEMBERS[:2]))
    first = api.apply(tmp_path / "a.ke", db=db, out=tmp_path / "a", registry=registry)
    (tmp_path / "b.ke").write_text(_script(tmp_path / "a", "memit", MEMIT_FAST, MEMBERS[2:]))
    api.apply(tmp_path / "b.ke", db=db, out=tmp_path / "b", registry=registry)
    with Store.open(db) as store, pytest.raises(UsageError, match="recomputes that run, but .* was saved by run"):
        revert(store, first.edits[0].edit_id, tmp_path / "b", tmp_path / "r", registry=registry)
    assert not (tmp_path / "r").exists()
