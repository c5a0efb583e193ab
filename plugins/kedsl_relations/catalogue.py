"""The built-in relation catalogue: prompt templates keyed by Wikidata property id.

Every relation has one prompt template with ``{}`` for the subject, written so that the
natural continuation of the prompt is the object ("The mother tongue of {} is" ->
"French"), at least two paraphrase templates of our own wording (used by the
``generalization`` metric), and readable snake_case aliases usable in scripts in place of
the id.

The catalogue covers the 34 relations of CounterFact (ROME's benchmark) plus other common,
date-free Wikidata properties. One entry is not a Wikidata property: ``located_in_city``
(alias ``located_in``), the city where a place or building stands. Wikidata's nearest
properties are broader (P131 "located in the administrative territorial entity" may be a
district, a state or a city; P276 "location" may be a venue or a country), and "{} is
located in the city of" is the phrasing edit scripts most often want.

Pure data: importing this module imports nothing beyond kedsl.specs.
"""
from __future__ import annotations

from kedsl.plugin import Relation


def _relation(rid: str, aliases: tuple[str, ...], template: str, *paraphrases: str, doc: str) -> Relation:
    return Relation(id=rid, template=template, paraphrases=tuple(paraphrases), aliases=aliases, doc=doc)


RELATIONS: tuple[Relation, ...] = (
    # -- the CounterFact relations --------------------------------------------------
    _relation(
        "P17", ("country", "located_in_country"),
        "{} is located in the country of",
        "{} can be found in the country of",
        "The country in which {} lies is",
        doc="country (the sovereign state the subject is in)",
    ),
    _relation(
        "P19", ("place_of_birth", "birthplace"),
        "{} was born in",
        "The birthplace of {} is",
        "{} came into the world in",
        doc="place of birth",
    ),
    _relation(
        "P20", ("place_of_death", "deathplace"),
        "{} died in",
        "The place where {} died is",
        "{} spent their final days in",
        doc="place of death",
    ),
    _relation(
        "P27", ("citizenship", "country_of_citizenship", "nationality"),
        "{} is a citizen of",
        "{} holds the citizenship of",
        "The country of citizenship of {} is",
        doc="country of citizenship",
    ),
    _relation(
        "P30", ("continent",),
        "{} is located on the continent of",
        "{} lies on the continent of",
        "The continent where {} is found is",
        doc="continent",
    ),
    _relation(
        "P36", ("capital",),
        "The capital of {} is",
        "The capital city of {} is",
        "{} has its seat of government in",
        doc="capital (the seat of government of a country or region)",
    ),
    _relation(
        "P37", ("official_language",),
        "The official language of {} is",
        "In {}, the official language is",
        "The language with official status in {} is",
        doc="official language",
    ),
    _relation(
        "P39", ("position_held",),
        "{} holds the position of",
        "{} served in the office of",
        "The office held by {} is that of",
        doc="position held (an office such as bishop or pope)",
    ),
    _relation(
        "P101", ("field_of_work",),
        "{} works in the field of",
        "The field of work of {} is",
        "{} is an expert in the discipline of",
        doc="field of work",
    ),
    _relation(
        "P103", ("mother_tongue", "native_language"),
        "The mother tongue of {} is",
        "{} is a native speaker of",
        "The first language of {} is",
        doc="native language",
    ),
    _relation(
        "P106", ("occupation", "profession"),
        "{} works as a",
        "By profession, {} is a",
        "The occupation of {} is",
        doc="occupation",
    ),
    _relation(
        "P108", ("employer",),
        "{} is employed by",
        "{} works for",
        "The employer of {} is",
        doc="employer",
    ),
    _relation(
        "P127", ("owned_by", "owner"),
        "{} is owned by",
        "The owner of {} is",
        "{} belongs to",
        doc="owned by",
    ),
    _relation(
        "P131", ("located_in_region", "administrative_region"),
        "{} is located in",
        "{} lies within",
        "{} is situated in",
        doc="located in the administrative territorial entity (a city, district, province or state)",
    ),
    _relation(
        "P136", ("genre",),
        "The genre of {} is",
        "{} is best known for the genre of",
        "{} works in the genre of",
        doc="genre (of an artist or a work)",
    ),
    _relation(
        "P138", ("named_after",),
        "{} is named after",
        "{} takes its name from",
        "The namesake of {} is",
        doc="named after",
    ),
    _relation(
        "P140", ("religion",),
        "The religion of {} is",
        "{} adheres to the faith of",
        "{} practises the religion of",
        doc="religion or worldview",
    ),
    _relation(
        "P159", ("headquarters", "headquarters_location"),
        "The headquarters of {} is in",
        "{} is headquartered in",
        "{} has its head office in",
        doc="headquarters location",
    ),
    _relation(
        "P176", ("manufacturer",),
        "{} is produced by",
        "{} is manufactured by",
        "The manufacturer of {} is",
        doc="manufacturer",
    ),
    _relation(
        "P178", ("developer",),
        "{} was developed by",
        "The developer of {} is",
        "{} is a product developed by",
        doc="developer (of software, hardware or a game)",
    ),
    _relation(
        "P190", ("twin_city", "sister_city"),
        "{} is a twin city of",
        "{} is twinned with",
        "The sister city of {} is",
        doc="twinned administrative body",
    ),
    _relation(
        "P264", ("record_label",),
        "{} is signed to the record label",
        "The record label of {} is",
        "{} releases music through the label",
        doc="record label",
    ),
    _relation(
        "P276", ("location",),
        "The location of {} is",
        "{} is based in",
        "You can find {} in",
        doc="location (of an institution, event or object)",
    ),
    _relation(
        "P364", ("original_language",),
        "The original language of {} is",
        "{} was originally made in",
        "The language {} was first produced in is",
        doc="original language of a film, TV show or publication",
    ),
    _relation(
        "P407", ("language_of_work", "written_in"),
        "{} is written in",
        "The language of {} is",
        "{} was originally written in",
        doc="language of work or name",
    ),
    _relation(
        "P413", ("position_played",),
        "{} plays in the position of",
        "The position played by {} is",
        "On the field, {} plays as a",
        doc="position played on team or speciality",
    ),
    _relation(
        "P449", ("original_network", "network"),
        "{} originally aired on",
        "{} was first broadcast on",
        "The original network of {} is",
        doc="original broadcaster",
    ),
    _relation(
        "P463", ("member_of",),
        "{} is a member of",
        "{} holds membership in",
        "{} belongs to the organisation",
        doc="member of (an organisation, alliance or team)",
    ),
    _relation(
        "P495", ("country_of_origin",),
        "{} originated in",
        "The country of origin of {} is",
        "{} comes from the country of",
        doc="country of origin",
    ),
    _relation(
        "P641", ("sport",),
        "The sport played by {} is",
        "{} competes in the sport of",
        "{} is a professional player of",
        doc="sport",
    ),
    _relation(
        "P740", ("location_of_formation", "formed_in"),
        "{} was founded in",
        "{} was formed in",
        "The place where {} was established is",
        doc="location of formation",
    ),
    _relation(
        "P937", ("work_location",),
        "{} worked in the city of",
        "The work location of {} was",
        "{} was professionally active in",
        doc="work location",
    ),
    _relation(
        "P1303", ("instrument",),
        "{} plays the",
        "The instrument played by {} is the",
        "{} performs on the",
        doc="instrument",
    ),
    _relation(
        "P1412", ("languages_spoken", "speaks_language"),
        "{} speaks",
        "{} is fluent in",
        "A language spoken by {} is",
        doc="languages spoken, written or signed",
    ),
    # -- other common, date-free relations ------------------------------------------
    _relation(
        "located_in_city", ("located_in",),
        "{} is located in the city of",
        "{} can be found in the city of",
        "The city where {} stands is",
        doc="the city where a place or building stands (not a Wikidata property; see the module docstring)",
    ),
    _relation(
        "P22", ("father",),
        "The father of {} is",
        "{}'s father is",
        "{} is the child of",
        doc="father",
    ),
    _relation(
        "P26", ("spouse",),
        "{} is married to",
        "The spouse of {} is",
        "{} is the wife or husband of",
        doc="spouse",
    ),
    _relation(
        "P35", ("head_of_state",),
        "The head of state of {} is",
        "{} has as its head of state",
        "The person who heads the state of {} is",
        doc="head of state",
    ),
    _relation(
        "P38", ("currency",),
        "The currency of {} is the",
        "In {}, people pay with the",
        "The official currency used in {} is the",
        doc="currency",
    ),
    _relation(
        "P50", ("author",),
        "{} was written by",
        "The author of {} is",
        "{} is a work by the writer",
        doc="author",
    ),
    _relation(
        "P54", ("member_of_sports_team", "sports_team", "plays_for"),
        "{} plays for",
        "{} is a player for",
        "The team that {} plays for is",
        doc="member of sports team",
    ),
    _relation(
        "P57", ("director",),
        "{} was directed by",
        "The director of {} is",
        "{} is a film directed by",
        doc="director",
    ),
    _relation(
        "P69", ("educated_at", "alma_mater"),
        "{} was educated at",
        "{} studied at",
        "The alma mater of {} is",
        doc="educated at",
    ),
    _relation(
        "P86", ("composer",),
        "The music of {} was composed by",
        "The composer of {} is",
        "{} features music written by",
        doc="composer",
    ),
    _relation(
        "P112", ("founded_by", "founder"),
        "{} was founded by",
        "The founder of {} is",
        "{} was established by",
        doc="founded by",
    ),
    _relation(
        "P123", ("publisher",),
        "{} is published by",
        "The publisher of {} is",
        "{} is brought out by the publisher",
        doc="publisher",
    ),
    _relation(
        "P175", ("performer",),
        "{} is performed by",
        "The performer of {} is",
        "{} is a song by",
        doc="performer",
    ),
    _relation(
        "P1376", ("capital_of",),
        "{} is the capital of",
        "{} is the capital city of",
        "The region whose capital is {} is",
        doc="capital of (the inverse of P36)",
    ),
)
