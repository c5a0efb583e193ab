"""The plugin registry: loads every ``kedsl`` entry point through pluggy and indexes
what the plugins contribute by name.

Built-in plugins (``plugins/``) and third-party packages are loaded the same way. A
plugin that fails to import is recorded with its error and skipped: the CLI keeps working
and ``kedsl plugins`` reports it.
"""
from __future__ import annotations

import importlib.metadata as md
import logging
import traceback
from types import ModuleType
from typing import Any, Iterable

import pluggy

from . import hookspecs
from ..errors import PluginError, did_you_mean
from .specs import ArchitectureSpec, MethodSpec, MetricSpec, ModelSourceSpec, PluginInfo, Relation

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "kedsl"

_KINDS = {
    "methods": ("register_methods", MethodSpec),
    "metrics": ("register_metrics", MetricSpec),
    "relations": ("register_relations", Relation),
    "model_sources": ("register_model_sources", ModelSourceSpec),
    "architectures": ("register_architectures", ArchitectureSpec),
}


class Registry:
    """Everything the loaded plugins provide, indexed by name.

    ``Registry()`` loads the installed entry points. Tests pass ``plugins=[module, ...]``
    (and ``entry_points=False``) to build a registry from modules in-process.
    """

    def __init__(self, plugins: Iterable[ModuleType | Any] = (), entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        if entry_points:
            self._load_entry_points()
        for plugin in plugins:
            name = getattr(plugin, "__name__", type(plugin).__name__)
            self._register(plugin, PluginInfo(name=name, module=name, distribution=None))
        self.methods: dict[str, MethodSpec] = {}
        self.metrics: dict[str, MetricSpec] = {}
        self.relations: dict[str, Relation] = {}
        self.relation_aliases: dict[str, str] = {}
        self.model_sources: list[ModelSourceSpec] = []
        self.architectures: dict[str, ArchitectureSpec] = {}
        self._collect()

    # -- loading -----------------------------------------------------------------
    def _load_entry_points(self) -> None:
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                distribution=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
            )
            if any(p.name == ep.name for p in self.plugins):
                continue  # the same distribution seen twice on sys.path
            try:
                module = ep.load()
            except Exception as exc:  # a broken third-party plugin must not take us down
                info.error = f"{type(exc).__name__}: {exc}"
                log.warning("plugin %s (%s) failed to import: %s", ep.name, ep.value, info.error)
                log.debug("%s", traceback.format_exc())
                self.plugins.append(info)
                continue
            self._register(module, info)

    def _register(self, plugin: Any, info: PluginInfo) -> None:
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            log.warning("plugin %s could not be registered: %s", info.name, info.error)
        self.plugins.append(info)

    def _collect(self) -> None:
        by_name = {p.name: p for p in self.plugins}
        for kind, (hook_name, cls) in _KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin_name = self.pm.get_name(impl.plugin)
                info = by_name.get(plugin_name)
                try:
                    items = impl.function() or []
                except Exception as exc:
                    if info is not None:
                        info.error = f"{hook_name} failed: {type(exc).__name__}: {exc}"
                    log.warning("plugin %s: %s failed: %s", plugin_name, hook_name, exc)
                    continue
                for item in items:
                    if not isinstance(item, cls):
                        raise PluginError(
                            f"plugin `{plugin_name}`: {hook_name}() returned {type(item).__name__}, "
                            f"expected {cls.__name__}",
                            "plugins must return the descriptors of kedsl.plugin (MethodSpec, MetricSpec, ...)",
                        )
                    self._add(kind, item, plugin_name)
                    if info is not None:
                        label = item.id if isinstance(item, Relation) else item.name
                        info.provides.setdefault(kind, []).append(label)

    def _add(self, kind: str, item: Any, plugin: str) -> None:
        if kind == "relations":
            # A later relation with the same id overrides (scripts may override too).
            self.relations[item.id] = item
            for alias in item.aliases:
                self.relation_aliases[alias] = item.id
            return
        if kind == "model_sources":
            self.model_sources.append(item)
            self.model_sources.sort(key=lambda s: s.priority)
            return
        table: dict[str, Any] = getattr(self, kind)
        if item.name in table:
            raise PluginError(
                f"two plugins define the {kind[:-1]} `{item.name}` (the second is `{plugin}`)",
                "uninstall one of them or rename the method in your plugin",
            )
        table[item.name] = item

    # -- lookups -----------------------------------------------------------------
    def method(self, name: str) -> MethodSpec:
        if name not in self.methods:
            raise PluginError(f"unknown method `{name}`", did_you_mean(name, list(self.methods)))
        return self.methods[name]

    def metric(self, name: str) -> MetricSpec:
        if name not in self.metrics:
            raise PluginError(f"unknown metric `{name}`", did_you_mean(name, list(self.metrics)))
        return self.metrics[name]

    def relation(self, name: str) -> Relation | None:
        """A relation by id (``P103``) or alias (``mother_tongue``), or None."""
        if name in self.relations:
            return self.relations[name]
        rid = self.relation_aliases.get(name)
        return self.relations.get(rid) if rid else None

    def relation_names(self) -> list[str]:
        return sorted(set(self.relations) | set(self.relation_aliases))

    def model_source_for(self, ref: str) -> ModelSourceSpec:
        for src in self.model_sources:
            if src.matches(ref):
                return src
        raise PluginError(
            f"no model source understands `{ref}`",
            "use an alias (see `kedsl plugins`), a Hugging Face id, a local directory or a .gguf file",
        )

    def architecture_for(self, model_type: str) -> ArchitectureSpec:
        for arch in self.architectures.values():
            if model_type in arch.model_types:
                return arch
        known = sorted(t for a in self.architectures.values() for t in a.model_types)
        raise PluginError(
            f"no architecture plugin knows the model type `{model_type}`",
            "an architecture plugin must say where this family keeps its layers, MLP output "
            "projection, attention, embeddings, final norm and LM head (kedsl.plugin.ArchitectureSpec); "
            f"known model types: {', '.join(known)}",
        )

    @property
    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]


_default: Registry | None = None


def software_versions(registry: Registry) -> dict[str, Any]:
    """The versions a run records: kedsl, torch, transformers and every loaded plugin
    (read from the installed distributions, so no heavy import is needed)."""
    from .. import __version__

    def installed(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {
        "kedsl": __version__,
        "torch": installed("torch"),
        "transformers": installed("transformers"),
        "plugins": {p.name: p.version for p in registry.plugins if not p.error},
    }


def get_registry() -> Registry:
    """The process-wide registry of installed plugins (loaded once)."""
    global _default
    if _default is None:
        _default = Registry()
    return _default
