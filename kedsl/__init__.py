"""kedsl: declarative knowledge editing for large language models.

The public Python API (what the CLI is a thin layer over) is imported lazily so that
``import kedsl`` stays light; see README.md for an example.
"""
from __future__ import annotations

__version__ = "0.1.0"
