"""The benchmark readers on slices of the real files (tests/fixtures/real, records 0-2 of
each): every field the KnowEdit metrics use reaches the case, every record gets KnowEdit's
kind of change, bad records are skipped with their index, SPLITS.json selects records."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kedsl.errors import DataError, ExitCode
from kedsl.evaluation.datasets import read_cases, split_indices

REAL = Path(__file__).parent / "fixtures" / "real"


def raw(name: str):
    return json.loads((REAL / name).read_text(encoding="utf-8"))


def test_knowedit_zsre_keeps_portability_keys_and_relation_specificity():
    loaded = read_cases(REAL / "knowedit_zsre_0-2.json")
    r, c = raw("knowedit_zsre_0-2.json")[0], loaded.cases[0]
    assert loaded.format == "knowedit" and not loaded.skipped
    assert (c.request.kind, c.request.prompt, c.request.target, c.request.old) == ("edit", r["prompt"], r["target_new"], r["ground_truth"][0])
    assert c.case.paraphrase == [(r["rephrase_prompt"], r["target_new"])]
    assert c.case.portability == {"Reasoning": [(p["prompt"], p["ground_truth"]) for p in r["portability"]["Reasoning"]]}
    assert [p for p, _ in c.case.locality] == [x["prompt"] for x in r["locality"]["Relation_Specificity"]]
    assert c.case.meta["locality_keys"] == ["Relation_Specificity"] * 2


def test_wikidata_recent_records_are_insertions():
    cases = read_cases(REAL / "knowedit_recent_0-2.json").cases
    assert [c.request.kind for c in cases] == ["insert"] * 3
    assert all(c.request.old is None for c in cases)
    r = raw("knowedit_recent_0-2.json")[0]
    nested = r["locality"]["Relation_Specificity"][1]["ground_truth"]  # [["Soviet Union", "USSR", ...]]
    assert cases[0].case.locality[1] == (r["locality"]["Relation_Specificity"][1]["prompt"], nested[0][0])


def test_wikidata_counterfact_keeps_both_locality_keys():
    cases = read_cases(REAL / "knowedit_counterfact_0-2.json").cases
    keys = {k for c in cases for k in c.case.meta["locality_keys"]}
    assert keys == {"Relation_Specificity", "Forgetfulness"}
    assert {k for c in cases for k in c.case.portability} >= {"Reasoning", "Subject_Aliasing"}
    assert all(c.request.kind == "edit" and c.request.old for c in cases)


def test_wikibio_is_a_long_form_edit_of_the_passage():
    loaded = read_cases(REAL / "knowedit_wikibio_0-2.json")
    r, c = raw("knowedit_wikibio_0-2.json")[0], loaded.cases[0]
    assert loaded.format == "wikibio"
    assert (c.request.kind, c.request.subject, c.request.prompt, c.request.target) == ("edit", r["concept"], r["text"], r["labels"])
    assert c.case.locality and c.case.meta["locality_keys"][0] == "Relation_Specificity"


def test_convsent_follows_easyedits_protocol_deterministically():
    first = read_cases(REAL / "knowedit_convsent_0-2.json")
    again = read_cases(REAL / "knowedit_convsent_0-2.json")
    records = raw("knowedit_convsent_0-2.json")
    assert first.format == "convsent" and [c.request for c in first.cases] == [c.request for c in again.cases]
    for i, c in enumerate(first.cases):
        s = c.case.meta["sentiment"]
        assert c.request.subject == records[i]["ent"] and records[i]["ent"] in s["question"]
        assert c.request.prompt == f"From the sentiment dataset, answer {s['question']} {'positively' if s['target'] == 'pos' else 'negatively'}."
        assert c.request.target == records[i][s["target"]][0].strip()
        assert s["answers"]["pos"] == [a.strip() for a in records[i]["pos"]]
        # locality: the next record's entity, asked the same way
        assert records[(i + 1) % 3]["ent"] in c.case.locality[0][0] and c.case.locality[0][1] is None


@pytest.mark.parametrize("name, subjects", [
    ("knowedit_sanitation_0-2.json", None),  # the test file gives no subject: the question itself
    ("knowedit_sanitation_train_0-2.json", "given"),
])
def test_sanitation_records_are_erasures_towards_i_dont_know(name, subjects):
    loaded = read_cases(REAL / name)
    data = raw(name)
    erase, keep = (data["success"], data["locality"]) if "success" in data else (data["K_F"], data["K_R"])
    assert loaded.format == "sanitation" and len(loaded.cases) == len(erase)
    for i, c in enumerate(loaded.cases):
        assert (c.request.kind, c.request.target, c.request.old) == ("erase", "I don't know.", erase[i]["ground_truth"])
        assert c.request.subject in c.request.prompt
        if subjects == "given":
            assert c.request.subject == erase[i]["subject"]
        assert c.case.locality == [(keep[i]["question"], keep[i]["ground_truth"])]


def test_counterfact_layouts():
    rome = read_cases(REAL / "counterfact_500_0-2.json")
    flat = read_cases(REAL / "counterfact_easyedit_0-2.json")
    assert (rome.format, flat.format) == ("counterfact", "counterfact_easyedit")
    r, c = raw("counterfact_easyedit_0-2.json")[0], flat.cases[0]
    assert c.case.locality == [(r["locality_prompt"], r["locality_ground_truth"])]  # not dropped any more
    assert c.case.paraphrase == [(r["rephrase_prompt"], r["target_new"])] and c.request.old == r["ground_truth"]
    assert all(c.case.neighborhood for c in rome.cases)


def test_mend_training_records_read_as_zsre():
    loaded = read_cases(REAL / "zsre_mend_train_0-2.json")
    assert loaded.format == "zsre" and len(loaded.cases) == 3


def test_a_bad_record_is_skipped_with_its_index(tmp_path, caplog):
    records = raw("knowedit_zsre_0-2.json")
    records[1]["prompt"] = ["not", "a", "string"]
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(records))
    with caplog.at_level(logging.WARNING):
        loaded = read_cases(path)
    assert [c.index for c in loaded.cases] == [0, 2]
    assert loaded.skipped[0][0] == 1 and "knowedit layout" in loaded.skipped[0][1]
    assert "record 1" in caplog.text


def test_a_file_with_no_usable_record_is_a_data_error(tmp_path):
    path = tmp_path / "wikibio.json"
    path.write_text(json.dumps([{"text": 1, "labels": "x", "concept": "c"}]))
    with pytest.raises(DataError) as e:
        read_cases(path)
    assert str(path) in e.value.message and "record 0" in e.value.message and e.value.exit_code == ExitCode.DATA


def test_splits_choose_records(tmp_path):
    folder = tmp_path / "data" / "knowedit"
    folder.mkdir(parents=True)
    (folder / "z.json").write_text((REAL / "knowedit_zsre_0-2.json").read_text())
    (tmp_path / "data" / "SPLITS.json").write_text(json.dumps({"knowedit/z.json": {"tune": [0], "heldout": [1, 2]}}))
    assert split_indices(folder / "z.json", "heldout") == [1, 2] and split_indices(folder / "z.json", "all") is None
    assert [c.index for c in read_cases(folder / "z.json", indices=[1, 2], limit=1).cases] == [1]
    with pytest.raises(DataError) as e:
        split_indices(folder / "z.json", "train")
    assert "no `train` split" in e.value.message and "heldout" in e.value.hint


def test_the_shared_splits_cover_the_held_out_knowedit_records():
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (shared / "SPLITS.json").is_file():
        pytest.skip("the shared data folder is not beside this checkout")
    held = split_indices(shared / "knowedit" / "recent_train.json", "heldout")
    assert held[0] == 150 and len(held) == 420
