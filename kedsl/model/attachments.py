"""Attachments: edit outcomes that are not weight deltas (adapters, codebooks, memories).

A method that adds one (LoRA/AdaLoRA adapters, GRACE's codebook, IKE's memory) subclasses
:class:`Attachment` and hands an instance to ``context.attach``. The core then treats it
like a weight change everywhere: a failed expectation uninstalls it, ``save`` writes it
beside the weights (``attachments/NN-kind/``), loading a saved directory installs it
again, ``kedsl revert`` removes exactly one edit's attachment, and the audit trail records
its digest. The weights' fingerprint stays the fingerprint of the *weights*: it is
computed with every attachment uninstalled, so an IKE memory leaves it unchanged and an
adapter saved unmerged does too (the attachments' own digest,
:func:`attachments_digest`, is recorded next to it).

A subclass implements ``attach``/``detach`` (install on and remove from a model, exactly),
``state``/``from_state`` (its content as tensors + a JSON-able config, for saving, loading
and the digest); it may override ``save``/``load`` to write a standard format (peft's
adapter files) and ``merged_deltas`` when it can be folded into the weights.
"""
from __future__ import annotations

import abc
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import ModelError, PluginError
from ..registry.specs import load_object
from .fingerprint import hash_tensors
from .handle import LoadedModel, detached, install, uninstall

__all__ = [
    "ATTACHMENTS_DIR", "Attachment", "attachments_digest", "detached", "install", "load_attachments",
    "save_attachments", "uninstall",
]  # fmt: skip

log = logging.getLogger(__name__)

#: Where a saved model keeps its attachments, one folder each.
ATTACHMENTS_DIR = "attachments"
TENSORS_FILE = "tensors.safetensors"
CONFIG_FILE = "config.json"


class Attachment(abc.ABC):
    """A removable, savable edit outcome. ``kind`` names the class for the store and
    the registry (a method declares the kinds it makes in ``MethodSpec.attachments``);
    ``method`` is the name of the method that made it."""

    kind: ClassVar[str] = ""
    method: ClassVar[str] = ""

    # -- installing ----------------------------------------------------------------
    @abc.abstractmethod
    def attach(self, model: LoadedModel) -> None:
        """Install on ``model`` (forward hooks, injected modules, prompt context)."""

    @abc.abstractmethod
    def detach(self, model: LoadedModel) -> None:
        """Remove from ``model``, leaving it exactly as before :meth:`attach`."""

    # -- content -------------------------------------------------------------------
    @abc.abstractmethod
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The content: tensors and a JSON-able config (what is saved and digested)."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> "Attachment":
        """Rebuild from :meth:`state`'s output."""

    def save(self, directory: Path) -> None:
        """Write the content into the (existing, empty) ``directory``."""
        from safetensors.torch import save_file

        tensors, config = self.state()
        if tensors:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(directory / TENSORS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> "Attachment":
        from safetensors.torch import load_file

        tensors = load_file(str(directory / TENSORS_FILE)) if (directory / TENSORS_FILE).is_file() else {}
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        return cls.from_state(tensors, config)

    def merged_deltas(self, model: LoadedModel) -> dict[str, torch.Tensor] | None:
        """Weight deltas equivalent to this attachment (``save ... merged``), keyed by
        parameter name of the plain model; None when it cannot be folded into weights."""
        return None

    def digest(self) -> str:
        """SHA-256 over kind, config and tensors (names, dtypes, shapes, bytes)."""
        tensors, config = self.state()
        h = hashlib.sha256()
        h.update(self.kind.encode())
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
        hash_tensors(h, tensors)
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """What the store records for this attachment."""
        return {"kind": self.kind, "method": self.method, "digest": self.digest()}


def attachments_digest(model: LoadedModel) -> str | None:
    """SHA-256 over the installed attachments' digests in order (None when there are none)."""
    if not model.attachments:
        return None
    h = hashlib.sha256()
    for a in model.attachments:
        h.update(a.digest().encode())
    return h.hexdigest()


# -- saving and loading -------------------------------------------------------------------------
def save_attachments(model: LoadedModel, directory: Path, skip: set[int] | None = None) -> list[dict[str, Any]]:
    """Write every installed attachment (but those whose index is in ``skip``) under
    ``directory/attachments``; return their entries for ``kedsl.json``."""
    entries: list[dict[str, Any]] = []
    for i, a in enumerate(model.attachments):
        if skip and i in skip:
            continue
        rel = f"{ATTACHMENTS_DIR}/{len(entries):02d}-{a.kind}"
        where = directory / rel
        where.mkdir(parents=True)
        a.save(where)
        entries.append({"kind": a.kind, "method": a.method, "path": rel, "digest": a.digest()})
    return entries


def load_attachments(model: LoadedModel, directory: Path, entries: list[dict[str, Any]], registry: Any) -> None:
    """Install the attachments a saved model lists in ``kedsl.json`` (in order)."""
    for entry in entries:
        kind, method = entry.get("kind"), entry.get("method")
        try:
            spec = registry.method(method)
        except PluginError:
            raise ModelError(
                f"`{directory}` holds a {kind} attachment made by method `{method}`, which is not installed",
                f"install the plugin that provides `{method}` (kedsl plugins lists what is installed)",
            ) from None
        impl = dict(spec.attachments).get(kind)
        if impl is None:
            raise ModelError(f"method `{method}` does not declare attachments of kind `{kind}` (saved in {directory})")
        cls = load_object(impl)
        att = cls.load(directory / entry["path"])
        if entry.get("digest") and att.digest() != entry["digest"]:
            raise ModelError(
                f"the {kind} attachment in {directory / entry['path']} does not match its recorded digest",
                "the files were changed after kedsl saved them; restore them or re-apply the script",
            )
        install(model, att)
    if entries:
        log.info("installed %d attachment(s) from %s", len(entries), directory)
