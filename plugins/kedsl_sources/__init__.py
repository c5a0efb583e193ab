"""kedsl_sources (work in progress)."""
