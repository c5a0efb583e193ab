"""kedsl: declarative knowledge editing for large language models.

The public Python API lives in :mod:`kedsl.api` and is re-exported here lazily, so that
``import kedsl`` (and ``kedsl check``) stays free of torch::

    import kedsl
    kedsl.apply("examples/eiffel.ke")
    ed = kedsl.Editor("smollm2-135m")
    kedsl.train("mend", model="smollm2-135m", data=["train.json"], out="editors/mend")
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "apply": ("kedsl.api", "apply"),
    "Editor": ("kedsl.api", "Editor"),
    "plan": ("kedsl.api", "plan"),
    "train": ("kedsl.api", "train"),
    "load_model": ("kedsl.model.loading", "load_model"),
    "Expect": ("kedsl.lang.ast", "Expect"),
    "ExpectPrompt": ("kedsl.lang.ast", "ExpectPrompt"),
    "Registry": ("kedsl.registry", "Registry"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'kedsl' has no attribute {name!r}")
