"""The built-in relation catalogue (plugins/kedsl_relations)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kedsl_relations
from kedsl.registry import Registry
from kedsl.registry.specs import Relation

REPO = Path(__file__).resolve().parent.parent
KNOWN_1000 = REPO.parent / "shared" / "data" / "known_1000.json"
COUNTERFACT_IDS = {
    "P17", "P19", "P20", "P27", "P30", "P36", "P37", "P39", "P101", "P103", "P106", "P108",
    "P127", "P131", "P136", "P138", "P140", "P159", "P176", "P178", "P190", "P264", "P276",
    "P364", "P407", "P413", "P449", "P463", "P495", "P641", "P740", "P937", "P1303", "P1412",
}
RELATIONS = kedsl_relations.RELATIONS


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(plugins=[kedsl_relations], entry_points=False)


def test_every_relation_is_a_descriptor_with_two_paraphrases():
    for rel in RELATIONS:
        assert isinstance(rel, Relation)
        assert len(rel.paraphrases) >= 2, rel.id
        assert rel.aliases and rel.doc, rel.id
        assert len(set((rel.template, *rel.paraphrases))) == 1 + len(rel.paraphrases), f"{rel.id}: repeated template"


@pytest.mark.parametrize("rel", RELATIONS, ids=lambda r: r.id)
def test_templates_have_exactly_one_slot_and_end_before_the_object(rel: Relation):
    for template in (rel.template, *rel.paraphrases):
        assert template.count("{}") == 1, f"{rel.id}: {template!r}"
        # The object is the continuation: no trailing space (the tokenization rule adds
        # it) and no slot-less brace or other format field.
        assert template == template.strip(), f"{rel.id}: {template!r}"
        assert not template.endswith("{}"), f"{rel.id}: the subject must not be the continuation"
        assert re.sub(r"\{\}", "", template).count("{") == 0, f"{rel.id}: {template!r}"


def test_ids_and_aliases_are_unique_across_relations():
    ids = [r.id for r in RELATIONS]
    assert len(ids) == len(set(ids))
    aliases = [a for r in RELATIONS for a in r.aliases]
    assert len(aliases) == len(set(aliases)), sorted(a for a in aliases if aliases.count(a) > 1)
    assert not set(aliases) & set(ids)
    for alias in aliases:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", alias), alias


def test_covers_all_counterfact_relations():
    ids = {r.id for r in RELATIONS}
    assert len(COUNTERFACT_IDS) == 34
    assert COUNTERFACT_IDS <= ids, sorted(COUNTERFACT_IDS - ids)


def test_covers_every_known_1000_relation():
    if not KNOWN_1000.exists():
        pytest.skip(f"{KNOWN_1000} is not on this machine")
    used = {r["relation_id"] for r in json.loads(KNOWN_1000.read_text())}
    assert len(used) == 33  # CounterFact's 34 minus P264
    ids = {r.id for r in RELATIONS}
    assert used <= ids, sorted(used - ids)
    assert COUNTERFACT_IDS - used == {"P264"}


def test_requested_common_relations_by_alias(registry: Registry):
    expected = {
        "mother_tongue": "P103", "native_language": "P103", "capital": "P36", "headquarters": "P159",
        "citizenship": "P27", "occupation": "P106", "employer": "P108", "founded_by": "P112",
        "developer": "P178", "sport": "P641", "position_played": "P413", "genre": "P136",
        "original_network": "P449", "religion": "P140", "continent": "P30", "twin_city": "P190",
        "educated_at": "P69", "spouse": "P26", "father": "P22", "author": "P50", "director": "P57",
        "member_of_sports_team": "P54", "place_of_death": "P20",
    }
    for alias, rid in expected.items():
        rel = registry.relation(alias)
        assert rel is not None and rel.id == rid, alias
        assert registry.relation(rid) is rel


def test_located_in_alias_is_the_city_template(registry: Registry):
    rel = registry.relation("located_in")
    assert rel is not None
    assert rel.template == "{} is located in the city of"
    assert rel.prompt("The Eiffel Tower") == "The Eiffel Tower is located in the city of"


def test_prompts_substitute_the_subject(registry: Registry):
    rel = registry.relation("P103")
    assert rel.prompt("Danielle Darrieux") == "The mother tongue of Danielle Darrieux is"
    prompts = rel.paraphrase_prompts("Danielle Darrieux")
    assert len(prompts) == len(rel.paraphrases)
    assert all("Danielle Darrieux" in p and "{}" not in p for p in prompts)


def test_registry_indexes_every_relation(registry: Registry):
    assert set(registry.relations) == {r.id for r in RELATIONS}
    names = registry.relation_names()
    assert "P1412" in names and "languages_spoken" in names
    assert registry.relation("no_such_relation") is None


def test_relations_command_lists_the_catalogue():
    kedsl = REPO / ".venv" / "bin" / "kedsl"
    cmd = [str(kedsl)] if kedsl.exists() else [sys.executable, "-m", "kedsl.cli"]
    text = subprocess.run(cmd + ["relations"], capture_output=True, text=True, check=True).stdout
    lines = text.splitlines()
    p103 = next(line for line in lines if line.startswith("P103 "))
    assert "mother_tongue, native_language" in p103 and p103.endswith("The mother tongue of {} is")
    # Wikidata ids in numeric order.
    order = [line.split()[0] for line in lines]
    assert order.index("P17") < order.index("P103") < order.index("P1303")
    data = json.loads(subprocess.run(cmd + ["relations", "--json"], capture_output=True, text=True, check=True).stdout)
    by_id = {d["id"]: d for d in data}
    assert by_id["located_in_city"]["aliases"] == ["located_in"]
    assert len(by_id["P36"]["paraphrases"]) >= 2
