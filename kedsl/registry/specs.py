"""What plugins contribute: plain, torch-free descriptors.

Each hook in :mod:`kedsl.hookspecs` returns a list of these. A descriptor carries the
metadata ``check`` needs (names, parameter schemas, thresholds) and names its
implementation as an import string ``"package.module:attribute"`` that is imported only
when the work starts, so ``check``/``fmt``/``plugins`` never import torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from .params import Param
from .presets import Depth, Preset, check_presets

#: The kinds of change a script states (``edit``, ``insert``, ``erase``): KnowEdit's
#: modification, insertion (a fact the model lacks) and erasure (forget an answer).
CHANGE_KINDS = ("edit", "insert", "erase")


def load_object(spec: str) -> Any:
    """Import ``"package.module:attr"`` and return the attribute."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"implementation {spec!r} must look like 'package.module:attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class MethodSpec:
    """An editing method (ROME, MEMIT, FT-M, ...).

    ``implementation`` names a class with a no-argument constructor and the interface of
    :class:`kedsl.editing.method.Method`. ``config`` is the method's
    :class:`~kedsl.registry.params.MethodConfig` subclass: its fields are the parameters,
    and ``params`` is derived from it (a method without a configuration class may give
    ``params`` directly instead, never both). ``presets`` are values measured per model
    (:class:`~kedsl.registry.presets.Preset`; each must name declared parameters with
    valid values); ``depth_defaults`` give layer parameters as fractions of depth for
    models without one. ``kinds`` are the kinds of change (:data:`CHANGE_KINDS`) the method
    accepts; it refuses the others with a :class:`~kedsl.errors.UsageError`.
    """

    name: str
    implementation: str
    params: tuple[Param, ...] = ()
    doc: str = ""
    supports_batch: bool = False
    supports_sequential: bool = True
    presets: tuple[Preset, ...] = ()
    depth_defaults: tuple[Depth, ...] = ()
    #: Non-weight outcomes the method makes, ``(kind, "package.module:Class")`` pairs of
    #: :class:`kedsl.model.attachments.Attachment` subclasses; loading a saved model uses them.
    attachments: tuple[tuple[str, str], ...] = ()
    config: type | None = None
    kinds: tuple[str, ...] = ("edit",)
    #: ``"package.module:Class"`` of the method's :class:`kedsl.training.trainer.Trainer`,
    #: for methods whose editor is trained first (``kedsl train METHOD``); None otherwise.
    trainer: str | None = None

    def __post_init__(self) -> None:
        if self.config is not None:
            if self.params:
                raise ValueError(f"method {self.name}: declare its parameters once, as config or as params, not both")
            object.__setattr__(self, "params", tuple(self.config.params()))
        bad_kinds = [k for k in self.kinds if k not in CHANGE_KINDS]
        if not self.kinds or bad_kinds:
            raise ValueError(f"method {self.name}: kinds must be a non-empty subset of {CHANGE_KINDS}, got {self.kinds}")
        check_presets(self.name, self.params, self.presets, self.depth_defaults)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def load(self) -> Any:
        return load_object(self.implementation)()


@dataclass(frozen=True)
class MetricSpec:
    """A metric (efficacy, locality, fluency, ...).

    ``default_threshold`` applies to ``expect NAME`` without a comparison; None means the
    metric is reported only. ``relative_tolerance`` (fluency) means: pass when the value is
    at least (1 - tolerance) x the pre-edit value. ``needs_baseline``: the executor
    measures the unedited model first (locality, fluency). ``prompt_form`` says what
    prompts an `expect` may give: "answer" (`"p" -> "a"`), "unchanged" (`"p" unchanged`),
    "any" or "none". ``prompts_field`` names the :class:`kedsl.evaluation.cases.EvalCase` field
    an `expect`'s own prompts fill (rewrite, paraphrase, portability, locality,
    generation). A metric with ``relative_tolerance`` puts the pre-edit value it compares
    against into ``MetricResult.details["baseline"]``.
    """

    name: str
    implementation: str
    doc: str = ""
    default_threshold: float | None = None
    relative_tolerance: float | None = None
    needs_baseline: bool = False
    prompt_form: str = "answer"
    prompts_field: str = "rewrite"
    higher_is_better: bool = True

    def load(self) -> Any:
        return load_object(self.implementation)()


@dataclass(frozen=True)
class Relation:
    """A prompt template with ``{}`` for the subject, keyed by a Wikidata id or a name."""

    id: str
    template: str
    paraphrases: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    doc: str = ""

    def prompt(self, subject: str) -> str:
        return self.template.replace("{}", subject, 1)

    def paraphrase_prompts(self, subject: str) -> list[str]:
        return [t.replace("{}", subject, 1) for t in self.paraphrases]


@dataclass(frozen=True)
class ModelSourceSpec:
    """Resolves a ``model "..."`` reference to a loaded model.

    ``matches(ref)`` decides, without importing torch, whether this source handles the
    reference; sources are tried in ascending ``priority``. ``implementation`` names a
    function ``load(ref: str, settings: dict) -> kedsl.plugin.LoadedModel``.
    ``aliases`` lists fixed names the source provides (shown by ``kedsl plugins``).
    """

    name: str
    implementation: str
    matches: Callable[[str], bool]
    priority: int = 100
    aliases: tuple[str, ...] = ()
    doc: str = ""

    def load(self) -> Any:
        return load_object(self.implementation)


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where one model family keeps its parts, as module paths with ``{}`` for the layer.

    ``mlp_out`` is the MLP's output projection, the weight ROME-family methods edit; its
    input is the "key" and its output the "value". ``transposed`` is True for GPT-2's
    Conv1D, whose weight is stored (in_features, out_features). ``mlp_out_norm`` is the
    norm a block applies to the MLP's output before adding it to the residual stream
    (Gemma 2/3's ``post_feedforward_layernorm``); None where the output is added as it is.
    Methods that turn a residual-stream target into a value (MEMIT, AlphaEdit) map it
    through this norm's inverse.
    """

    name: str
    model_types: tuple[str, ...]
    layers: str  # the ModuleList of blocks, e.g. "model.layers"
    mlp: str  # e.g. "model.layers.{}.mlp"
    mlp_out: str  # e.g. "model.layers.{}.mlp.down_proj"
    attn: str  # e.g. "model.layers.{}.self_attn"
    embed: str  # token embedding, e.g. "model.embed_tokens"
    final_norm: str  # e.g. "model.norm"
    lm_head: str  # e.g. "lm_head"
    transposed: bool = False
    mlp_out_norm: str | None = None  # e.g. "model.layers.{}.post_feedforward_layernorm"
    doc: str = ""

    def layer_path(self, template: str, layer: int) -> str:
        return template.format(layer)


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as ``kedsl plugins`` lists it."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    error: str | None = None
    provides: dict[str, list[str]] = field(default_factory=dict)
