"""Built-in relations: prompt templates keyed by Wikidata property id, with aliases.

``P103`` and ``mother_tongue`` name the same relation; a script may use either, define its
own relation, or override a built-in one. The catalogue itself lives in
:mod:`kedsl_relations.catalogue` (`kedsl relations` lists it).
"""
from __future__ import annotations

from kedsl.plugin import Relation, hookimpl

from .catalogue import RELATIONS

__all__ = ["RELATIONS", "register_relations"]


@hookimpl
def register_relations() -> list[Relation]:
    return list(RELATIONS)
