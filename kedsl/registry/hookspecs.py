"""The kedsl plugin contract: every hook a plugin may implement.

A plugin is a Python module registered under the ``kedsl`` entry-point group, exactly as
the built-ins in ``plugins/`` are (see pyproject.toml)::

    [project.entry-points.kedsl]
    my_metric = "my_package"

and implementing any of the hooks below with the :data:`hookimpl` marker::

    from kedsl.plugin import MetricSpec, hookimpl

    @hookimpl
    def register_metrics():
        return [MetricSpec(name="my_metric", implementation="my_package.impl:MyMetric")]

Each hook returns a list of descriptors (:mod:`kedsl.registry.specs`, all importable from
:mod:`kedsl.plugin`). A plugin module's top level must stay importable without torch
(import heavy code inside the implementation named by the descriptor), so that
``kedsl check`` stays fast.
"""
from __future__ import annotations

import pluggy

from .specs import ArchitectureSpec, MethodSpec, MetricSpec, ModelSourceSpec, Relation

PROJECT = "kedsl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_methods() -> list[MethodSpec]:
    """Editing methods. Each :class:`~kedsl.specs.MethodSpec` declares the method's name,
    its parameters (a :class:`~kedsl.registry.params.MethodConfig` whose fields carry
    types, defaults and ranges: validated by ``check``), per-family presets, the kinds of
    change it accepts, whether it supports ``batch`` blocks and sequential editing, and
    the class implementing :class:`kedsl.editing.method.Method`."""


@hookspec
def register_metrics() -> list[MetricSpec]:
    """Metrics usable in ``expect`` statements and in ``kedsl bench``. The implementation
    follows :class:`kedsl.evaluation.metric.Metric`."""


@hookspec
def register_relations() -> list[Relation]:
    """Relations: prompt templates with ``{}`` for the subject, keyed by id (a Wikidata
    property id such as ``P103`` for the built-in catalogue) with readable aliases."""


@hookspec
def register_model_sources() -> list[ModelSourceSpec]:
    """Model sources: resolve a ``model "..."`` reference (an alias, a Hugging Face id, a
    local directory, a ``.gguf`` file) to a loaded model and tokenizer."""


@hookspec
def register_architectures() -> list[ArchitectureSpec]:
    """Architectures: where a model family keeps its layers, MLP projections, attention,
    embeddings and head, so that methods never hard-code module names."""
