"""Benchmark readers (kedsl.data) on a slice of the real ZsRE file and on KnowEdit and
CounterFact records constructed from the published layouts (tests/fixtures/README.md)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kedsl.evaluation.datasets import load_cases, read_records
from kedsl.errors import DataError, ExitCode

FIX = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
ZSRE = FIX / "zsre_slice_50_59.json"
KNOWEDIT = FIX / "knowedit_sample.json"
COUNTERFACT = FIX / "counterfact_sample.jsonl"


def test_zsre_slice_maps_fields_and_skips_empty_alt(caplog):
    raw = json.loads(ZSRE.read_text())
    with caplog.at_level(logging.WARNING, logger="kedsl.data"):
        cases = load_cases(ZSRE)
    assert len(cases) == 9  # record 4 of the slice (54 of the file) has no `alt`
    assert "skipped 1 zsre record" in caplog.text
    assert [c.index for c in cases] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    c, r = cases[0], raw[0]
    assert c.format == "zsre" and c.case.meta["record"] == 0
    assert c.request.subject == r["subject"] and c.request.prompt == r["src"]
    # targets lose the leading space some records carry: the tokenization rule adds it
    assert r["alt"] == " species" and c.request.target == "species"
    assert c.request.old == r["answers"][0].strip()
    assert c.request.paraphrases == [r["rephrase"]]
    assert c.case.rewrite == [(r["src"], "species")]
    assert c.case.paraphrase == [(r["rephrase"], "species")]
    assert c.case.locality == [(r["loc"], r["loc_ans"].strip())]
    assert c.case.locality[0][0].startswith("nq question: ")
    assert all(x.request.subject in x.request.prompt for x in cases)


def test_offset_and_limit_count_file_records():
    cases = load_cases(ZSRE, offset=3, limit=3)  # records 3, 4 (skipped), 5
    assert [c.index for c in cases] == [3, 5]


@pytest.mark.skipif(not (SHARED_DATA / "zsre_eval_head.json").exists(), reason="shared data not present")
def test_real_zsre_file(caplog):
    with caplog.at_level(logging.WARNING, logger="kedsl.data"):
        cases = load_cases(SHARED_DATA / "zsre_eval_head.json")
    assert len(cases) == 1508 - 6
    assert "skipped 6 zsre record" in caplog.text
    tune = load_cases(SHARED_DATA / "zsre_eval_head.json", limit=500)
    assert max(c.index for c in tune) == 499 and len(tune) == 498  # 54 and 103 skipped


def test_knowedit_records():
    cases = load_cases(KNOWEDIT)
    assert [c.format for c in cases] == ["knowedit"] * 3
    a, b, c = (x.case for x in cases)
    assert a.target == "University of Michigan" and a.old == "Illinois Institute of Technology"
    assert a.paraphrase == [("What university did Watts Humphrey take part in?", "University of Michigan")]
    # nested alias lists: first alias; empty keys dropped
    assert a.portability == {
        "Reasoning": [("In which city is the university Watts Humphrey attended located?", "Ann Arbor")],
        "Subject_Aliasing": [("What university did Watts S. Humphrey attend?", "University of Michigan")],
    }
    assert a.locality[1] == ("The occupation of Watts Humphrey is", "software engineer")
    assert a.meta["locality_keys"] == ["Relation_Specificity", "Relation_Specificity"]
    # string ground_truth, `rephrase`, a locality key holding one object
    assert b.old == "Paris" and b.paraphrase == [("Where is the Eiffel Tower? It is in the city of", "Rome")]
    assert b.locality == [
        ("The Louvre is located in the city of", "Paris"),
        ("The Eiffel Tower was designed by", "Gustave Eiffel"),
    ]
    assert b.meta["locality_keys"] == ["Forgetfulness", "Relation_Specificity"]
    # list target_new, no portability/locality
    assert c.target == "Bill Gates" and c.portability == {} and c.locality == []
    assert cases[1].request.prompt == "The Eiffel Tower is located in the city of"


def test_counterfact_records_from_jsonl():
    cases = load_cases(COUNTERFACT)
    assert [c.format for c in cases] == ["counterfact", "counterfact"]
    c = cases[0]
    assert c.request.prompt == "The mother tongue of Danielle Darrieux is"
    assert c.request.target == "English" and c.request.old == "French" and c.request.relation == "P103"
    assert c.case.rewrite == [("The mother tongue of Danielle Darrieux is", "English")]
    assert len(c.case.paraphrase) == 2 and all(a == "English" for _, a in c.case.paraphrase)
    assert c.case.neighborhood[0] == ("The mother tongue of Léon Blum is", "French")
    assert c.case.locality == c.case.neighborhood
    assert c.case.generation[0] == "Danielle Darrieux's mother tongue is"
    assert c.case.meta["case_id"] == 0 and len(c.case.meta["attribute_prompts"]) == 2


def test_format_can_be_forced_and_is_checked(tmp_path):
    with pytest.raises(DataError) as e:
        load_cases(ZSRE, format="counterfact")
    assert "record 0" in e.value.message and e.value.hint
    with pytest.raises(DataError):
        load_cases(ZSRE, format="mquake")


@pytest.mark.parametrize(
    "content, needle",
    [
        ("[{\"src\": \"x\",", "not valid JSON"),
        ("{\"a\": 1}", "not a list of records"),
        ("[1, 2]", "not an object"),
        ("[{\"question\": \"x\"}]", "cannot tell the benchmark format"),
        ("[{\"src\": \"q\", \"alt\": \"a\"}]", "does not have the zsre layout"),
    ],
)
def test_malformed_files_raise_data_error(tmp_path, content, needle):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(DataError) as e:
        load_cases(p)
    assert needle in e.value.message
    assert e.value.exit_code == ExitCode.DATA and e.value.hint


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError):
        load_cases(tmp_path / "nope.json")


def test_saved_datasets_directory_is_read(tmp_path):
    datasets = pytest.importorskip("datasets")
    recs = json.loads(ZSRE.read_text())
    datasets.Dataset.from_list(recs).save_to_disk(str(tmp_path / "ds"))
    assert read_records(tmp_path / "ds") == recs
    assert [c.index for c in load_cases(tmp_path / "ds")] == [c.index for c in load_cases(ZSRE)]
