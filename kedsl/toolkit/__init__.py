"""The shared editing toolkit: the pieces every locate-then-edit method needs, written
once (tokens and spans, activation read/patch, context templates, second-moment
statistics with their cache)."""
