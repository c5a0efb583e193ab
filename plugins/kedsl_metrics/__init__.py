"""kedsl_metrics (work in progress)."""
