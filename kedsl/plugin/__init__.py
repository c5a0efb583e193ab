"""The face of kedsl for plugin authors: everything a plugin imports, from one module.

A plugin package has a descriptor module (its ``kedsl`` entry point, importable without
torch) and implementation modules named by its descriptors::

    # my_plugin/__init__.py: the descriptors
    from dataclasses import dataclass
    from typing import ClassVar

    from kedsl.plugin import MethodConfig, MethodSpec, hookimpl, param

    @dataclass
    class MyConfig(MethodConfig):
        method: ClassVar[str] = "my_method"
        layer: int = param(6, "layer whose MLP output projection is edited", min=0)

    @hookimpl
    def register_methods():
        return [MethodSpec(name="my_method", implementation="my_plugin.impl:MyMethod", config=MyConfig)]

    # my_plugin/impl.py: the method (imports torch)
    from kedsl.plugin import EditContext, EditOutcome, LoadedModel, Method

    class MyMethod(Method):
        def apply(self, model, requests, params, context):
            cfg = MyConfig.from_params(params, context.seed)
            ...
            return context.outcome()

The names in the first group below are torch-free; those in the second import torch on
first use, so a descriptor module that uses only the first stays light (``kedsl check``
and ``kedsl plugins`` never import torch). The shared editing toolkit
(:mod:`kedsl.toolkit`: tokens, activations, scoring, statistics, the value search,
multi-layer updates, prompt embeddings, tracing) is public for method authors too. A method
whose editor is trained first (MEND, SERAC) names a :class:`Trainer` in its spec and loads
the trained editor with ``load_editor``. :mod:`kedsl.plugin.testing`
is the conformance kit a method author runs against their method.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..cache import models_dir, stats_dir, wheels_dir
from ..editing.method import Method
from ..editing.request import EditRequest
from ..errors import DataError, ModelError, PluginError, UsageError
from ..evaluation.cases import EvalCase, Pair
from ..evaluation.metric import Metric, MetricResult
from ..registry.hookspecs import hookimpl
from ..registry.params import MethodConfig, Param, Range, param
from ..registry.presets import Depth, ModelShape, Preset
from ..registry.specs import CHANGE_KINDS, ArchitectureSpec, MethodSpec, MetricSpec, ModelSourceSpec, Relation
from ..training.trainer import Trainer, TrainingExample

if TYPE_CHECKING:
    from ..editing.outcome import EditContext, EditOutcome
    from ..model.attachments import Attachment
    from ..model.handle import LoadedModel
    from ..model.journal import WeightChange, WeightJournal
    from ..model.loading import converted_dir, file_sha256, load_gguf, load_pretrained
    from ..training.editors import load_editor

#: Torch-bound names, imported on first use: name -> module.
_ON_FIRST_USE = {
    "EditContext": "kedsl.editing.outcome",
    "EditOutcome": "kedsl.editing.outcome",
    "WeightChange": "kedsl.model.journal",
    "WeightJournal": "kedsl.model.journal",
    "Attachment": "kedsl.model.attachments",
    "LoadedModel": "kedsl.model.handle",
    "load_pretrained": "kedsl.model.loading",
    "load_gguf": "kedsl.model.loading",
    "converted_dir": "kedsl.model.loading",
    "file_sha256": "kedsl.model.loading",
    "load_editor": "kedsl.training.editors",
}

__all__ = [
    # descriptors and hooks (torch-free)
    "hookimpl", "MethodSpec", "MetricSpec", "Relation", "ModelSourceSpec", "ArchitectureSpec", "CHANGE_KINDS",
    # parameters and configurations
    "MethodConfig", "param", "Param", "Preset", "Depth", "ModelShape", "Range",
    # what methods and metrics receive and return
    "Method", "EditRequest", "Metric", "MetricResult", "EvalCase", "Pair",
    # trained editors (kedsl train): what a method's trainer is and learns from
    "Trainer", "TrainingExample",
    # errors a user can cause, and the cache folders
    "UsageError", "ModelError", "DataError", "PluginError", "models_dir", "stats_dir", "wheels_dir",
    # torch-bound, imported on first use
    *_ON_FIRST_USE,
]  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module 'kedsl.plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
