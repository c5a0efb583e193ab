"""kedsl_relations (work in progress)."""
