"""kedsl_rome (work in progress)."""
