"""Declared parameters of method plugins, and the configuration built from them.

A method declares its parameters once, as the fields of a :class:`MethodConfig`
subclass (each made with :func:`param`: default, meaning, bounds)::

    @dataclass
    class MyConfig(MethodConfig):
        method: ClassVar[str] = "my_method"
        layer: int = param(6, "layer whose MLP output projection is edited", min=0)

Its :class:`MethodSpec` names the class (``config=MyConfig``) and gets the :class:`Param`
schema from it: ``kedsl check`` validates a script's ``using method(k=v)`` against that
schema without importing torch, the executor resolves defaults and presets through
:func:`kedsl.registry.presets.resolve_for_model`, and the method builds its configuration with
``MyConfig.from_params(params)``. Defaults, types and ranges live in that one place.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from ..errors import UsageError, did_you_mean

# Types a parameter may declare. "layers" accepts an int, a list of ints or a range `a..b`
# and always resolves to a list of ints.
PARAM_TYPES = ("int", "float", "bool", "str", "list[int]", "list[str]", "layers", "int|auto")


@dataclass(frozen=True)
class Range:
    """An inclusive integer range ``start..stop`` as written in scripts (``3..7``)."""

    start: int
    stop: int

    def to_list(self) -> list[int]:
        step = 1 if self.stop >= self.start else -1
        return list(range(self.start, self.stop + step, step))


@dataclass(frozen=True)
class Param:
    """One declared parameter of a method plugin."""

    name: str
    type: str
    default: Any = None
    doc: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise ValueError(f"parameter {self.name!r}: unknown type {self.type!r}; one of {PARAM_TYPES}")

    def describe(self) -> str:
        bounds = ""
        if self.min is not None or self.max is not None:
            lo = "-inf" if self.min is None else _num(self.min)
            hi = "inf" if self.max is None else _num(self.max)
            bounds = f" in [{lo}, {hi}]"
        if self.choices:
            bounds = " one of " + ", ".join(repr(c) for c in self.choices)
        return f"{self.name}: {self.type}{bounds} (default {self.default!r})"

    def validate(self, value: Any) -> tuple[Any, str | None]:
        """Coerce ``value`` to this parameter's type; return (value, error message or None)."""
        t = self.type
        if t == "int|auto":
            if value == "auto":
                return "auto", None
            t = "int"
        if t == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                return value, f"parameter `{self.name}` expects an integer, got {_show(value)}"
        elif t == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return value, f"parameter `{self.name}` expects a number, got {_show(value)}"
            value = float(value)
        elif t == "bool":
            if not isinstance(value, bool):
                return value, f"parameter `{self.name}` expects true or false, got {_show(value)}"
        elif t == "str":
            if not isinstance(value, str):
                return value, f"parameter `{self.name}` expects a string, got {_show(value)}"
        elif t in ("list[int]", "layers"):
            if t == "layers" and isinstance(value, int) and not isinstance(value, bool):
                value = [value]
            elif isinstance(value, Range):
                value = value.to_list()
            if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                return value, f"parameter `{self.name}` expects a list of integers, got {_show(value)}"
            if not value:
                return value, f"parameter `{self.name}` must not be empty"
            for v in value:
                err = self._check_bounds(v)
                if err:
                    return value, err
            return value, None
        elif t == "list[str]":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return value, f"parameter `{self.name}` expects a list of strings, got {_show(value)}"
            return value, None
        if self.choices is not None and value not in self.choices:
            opts = ", ".join(repr(c) for c in self.choices)
            return value, f"parameter `{self.name}` must be one of {opts}, got {_show(value)}"
        return value, self._check_bounds(value)

    def _check_bounds(self, value: Any) -> str | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.min is not None and value < self.min:
                return f"parameter `{self.name}` must be >= {_num(self.min)}, got {_num(value)}"
            if self.max is not None and value > self.max:
                return f"parameter `{self.name}` must be <= {_num(self.max)}, got {_num(value)}"
        return None


def _num(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v)) if abs(v) < 1e15 else str(v)
    return str(v)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Range):
        return f"the range {value.start}..{value.stop}"
    return repr(value)


def validate_params(schema: "list[Param] | tuple[Param, ...]", given: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """Check ``given`` against ``schema``; return (param name, message, hint) for each problem."""
    by_name = {p.name: p for p in schema}
    problems: list[tuple[str, str, str | None]] = []
    for name, value in given.items():
        p = by_name.get(name)
        if p is None:
            hint = did_you_mean(name, list(by_name)) or (
                "known parameters: " + ", ".join(sorted(by_name)) if by_name else "this method takes no parameters"
            )
            problems.append((name, f"unknown parameter `{name}`", hint))
            continue
        _, err = p.validate(value)
        if err:
            problems.append((name, err, p.describe()))
    return problems


def resolve_params(schema: "list[Param] | tuple[Param, ...]", given: dict[str, Any]) -> dict[str, Any]:
    """Declared defaults overlaid by ``given``, coerced and validated. Presets come on top
    of the defaults through :func:`kedsl.registry.presets.resolve_for_model`."""
    values: dict[str, Any] = {p.name: p.default for p in schema}
    values.update(given)
    by_name = {p.name: p for p in schema}
    out: dict[str, Any] = {}
    for k, v in values.items():
        if k not in by_name:
            raise KeyError(f"unknown parameter {k!r}")
        if v is None:
            out[k] = None
            continue
        coerced, err = by_name[k].validate(v)
        if err:
            raise UsageError(err, by_name[k].describe())
        out[k] = coerced
    return out


# -- method configurations: one declaration per parameter -------------------------------------
_META = "kedsl_param"
#: Annotations a parameter's script type is read from (``X | None`` reads as ``X``); the
#: script-only types ``layers`` and ``int|auto`` are given with ``param(type=...)``.
_ANNOTATION_TYPES = {"int": "int", "float": "float", "bool": "bool", "str": "str", "list[int]": "list[int]", "list[str]": "list[str]"}


@dataclass(frozen=True)
class _ParamInfo:
    doc: str
    type: str | None
    min: float | None
    max: float | None
    choices: tuple[Any, ...] | None


def param(
    default: Any = None,
    doc: str = "",
    *,
    type: str | None = None,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A field of a :class:`MethodConfig` that is also a parameter scripts may set:
    ``default`` (None: "not set", the method decides), ``doc`` (what ``kedsl plugins`` and
    ``check``'s hints show), bounds and choices (checked by ``kedsl check``). ``type`` is
    needed only for the script types an annotation cannot say (``"layers"``,
    ``"int|auto"``); otherwise it is read from the field's annotation."""
    info = _ParamInfo(doc=doc, type=type, min=min, max=max, choices=choices)
    if type is not None and type not in PARAM_TYPES:
        raise ValueError(f"unknown parameter type {type!r}; one of {PARAM_TYPES}")
    if isinstance(default, (list, dict, set)):
        frozen = list(default) if isinstance(default, list) else default
        return field(default_factory=lambda: list(frozen) if isinstance(frozen, list) else frozen.copy(), metadata={_META: info})
    return field(default=default, metadata={_META: info})


def _script_type(cls: type, f: dataclasses.Field, info: _ParamInfo) -> str:
    if info.type is not None:
        return info.type
    # a string under `from __future__ import annotations`, else the type object itself
    text = f.type if isinstance(f.type, str) else f.type.__name__ if isinstance(f.type, type) else str(f.type)
    parts = [t.strip() for t in text.split("|") if t.strip() != "None"]
    if len(parts) == 1 and parts[0] in _ANNOTATION_TYPES:
        return _ANNOTATION_TYPES[parts[0]]
    raise TypeError(f"{cls.__name__}.{f.name}: cannot read a parameter type from the annotation {text!r}; give param(type=...)")


C = TypeVar("C", bound="MethodConfig")


@dataclass
class MethodConfig:
    """Base class of a method's configuration: a dataclass whose fields, each made with
    :func:`param`, are the method's parameters (the single declaration of their
    defaults, types and ranges). ``method`` is the registered name, for messages.

    A field with default None is a parameter the method resolves itself (``seed``: the
    run's seed, see :meth:`from_params`; ``bf16``: the CPU decides). Subclasses add
    fields or resolve values that need the model (ROME's ``layer=auto``)."""

    method: ClassVar[str] = "method"

    @classmethod
    def params(cls) -> tuple[Param, ...]:
        """The declared schema, in field order; a field not made with :func:`param` is an
        error (every field of a method's configuration is a parameter)."""
        out = []
        for f in dataclasses.fields(cls):
            info = f.metadata.get(_META)
            if info is None:
                raise TypeError(f"{cls.__name__}.{f.name} is not declared with kedsl.plugin.param(...)")
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            out.append(Param(f.name, _script_type(cls, f, info), default, info.doc, info.min, info.max, info.choices))
        return tuple(out)

    @classmethod
    def from_params(cls: type[C], params: dict[str, Any], default_seed: int = 0) -> C:
        """The configuration for resolved ``params`` (:func:`resolve_params`): a name that
        is not a field is a UsageError (a schema/config mismatch must not pass silently),
        None keeps the declared default, and a ``seed`` left unset takes ``default_seed``
        (the run's)."""
        return cls(**config_values(cls, params, cls.method, default_seed))


def config_values(config_class: type, params: dict[str, Any], method: str, default_seed: int | None = None) -> dict[str, Any]:
    """The keyword arguments for a method's config dataclass from resolved ``params``:
    a name the dataclass lacks is a UsageError (a schema/config mismatch must not pass
    silently), None means "the dataclass default", and ``seed`` (where the config has
    one) defaults to the run's."""
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = set(params) - names
    if unknown:
        raise UsageError(f"unknown {method} parameter(s): {', '.join(sorted(unknown))}", f"see `kedsl plugins` for {method}'s parameters")
    values = {k: v for k, v in params.items() if v is not None}
    if default_seed is not None and "seed" in names:
        values.setdefault("seed", default_seed)
    return values
