"""Loading models: pick a model source plugin, load, attach the architecture.

The pieces every source shares live here, written once: settings validation,
``from_pretrained`` on a Hugging Face directory (or id), and the one-time GGUF ->
safetensors conversion cached under ``<cache>/models/`` keyed by the file's SHA-256.
Source plugins (``plugins/kedsl_sources``) only decide where the files come from.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from ..cache import models_dir
from ..errors import ModelError, PluginError, UsageError, did_you_mean
from ..files import file_sha256, fsync_tree
from ..registry import Registry, get_registry
from ..registry.specs import ArchitectureSpec
from .attachments import load_attachments
from .handle import LoadedModel
from .saving import MARKER, read_method_state

log = logging.getLogger(__name__)

#: Settings a `model` statement (or the API) may give, with their defaults.
SETTINGS: dict[str, Any] = {"dtype": "float32", "device": "cpu", "device_map": None, "max_memory": None, "offload_folder": None}

#: accelerate's placement strategies (a device map may also be a mapping of module -> device)
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}

# Temp dirs of conversions killed mid-way are removed once clearly abandoned.
_STALE_TEMP_S = 6 * 3600

# The registry load_model was given, for the sources' shared helpers (their documented
# signature is load(ref, settings), so it travels out of band).
_active_registry: contextvars.ContextVar[Registry | None] = contextvars.ContextVar("kedsl_registry", default=None)


# -- settings --------------------------------------------------------------------------
def resolve_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """Validate model settings and fill defaults: ``dtype`` becomes a ``torch.dtype``,
    ``device`` a concrete device string (``auto`` -> cuda when available)."""
    given = dict(settings or {})
    unknown = [k for k in given if k not in SETTINGS]
    if unknown:
        name = unknown[0]
        raise UsageError(
            f"unknown model setting `{name}`",
            did_you_mean(name, list(SETTINGS)) or f"model settings are: {', '.join(SETTINGS)}",
        )
    out = {**SETTINGS, **given}

    dtype = out["dtype"]
    if isinstance(dtype, torch.dtype):
        if dtype not in set(_DTYPES.values()):
            raise UsageError(f"unsupported dtype {dtype}", "use float32, bfloat16 or float16")
    else:
        key = str(dtype).strip().lower().removeprefix("torch.")
        if key not in _DTYPES:
            raise UsageError(
                f"unknown dtype `{dtype}`",
                did_you_mean(key, ["float32", "bfloat16", "float16"]) or "use float32, bfloat16 or float16",
            )
        dtype = _DTYPES[key]
    out["dtype"] = dtype

    device = str(out["device"]).strip().lower()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"device `{device}` requested but CUDA is not available", "use device \"cpu\" or \"auto\"")
    elif device != "cpu":
        raise UsageError(f"unknown device `{out['device']}`", "use cpu, cuda, cuda:N or auto")
    out["device"] = device
    out["device_map"] = _device_map(out["device_map"])
    out["max_memory"] = _max_memory(out["max_memory"])
    if out["offload_folder"] is not None:
        out["offload_folder"] = str(out["offload_folder"])
    return out


def _device_map(value: Any) -> str | dict[str, Any] | None:
    """A device map as accelerate takes it: a strategy name, or module -> device (given
    as a mapping, or in a script as a JSON object string: ``device_map="{\"model.layers.3\": \"disk\", ...}"``)."""
    if value is None or isinstance(value, dict):
        return value
    text = str(value).strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"device_map is not a JSON object: {exc}", 'e.g. device_map="{\"model.layers.0\": \"cpu\", \"model.layers.1\": \"disk\"}"') from None
        if not isinstance(parsed, dict):
            raise UsageError("device_map must map module names to devices")
        return parsed
    if text not in DEVICE_MAP_STRATEGIES:
        raise UsageError(f"unknown device_map `{text}`", did_you_mean(text, list(DEVICE_MAP_STRATEGIES)) or
                         f"use {', '.join(DEVICE_MAP_STRATEGIES)} or a JSON object of module -> device")  # fmt: skip
    return text


def _max_memory(value: Any) -> dict[Any, str] | None:
    """accelerate's ``max_memory`` from a mapping, or from ``"cpu=2GiB"`` strings (a list,
    or one comma-separated string): the most each device may hold; a GPU by its index."""
    if value is None or isinstance(value, dict):
        return value
    items = value if isinstance(value, list) else str(value).split(",")
    out: dict[Any, str] = {}
    for item in items:
        device, eq, size = str(item).partition("=")
        if not eq or not device.strip() or not size.strip():
            raise UsageError(f"max_memory entry {item!r} is not DEVICE=SIZE", 'e.g. max_memory=["0=10GiB", "cpu=30GiB"]')
        key = device.strip()
        out[int(key) if key.isdigit() else key] = size.strip()
    return out


# -- the entry point -------------------------------------------------------------------
def load_model(ref: str, settings: dict[str, Any] | None = None, registry: Registry | None = None) -> LoadedModel:
    """Load what ``model "<ref>"`` names: an alias (``smollm2-135m``), a ``.gguf`` file, a
    local directory or a Hugging Face id; in eval mode, with a pad token."""
    registry = registry or get_registry()
    resolved = resolve_settings(settings)
    source = registry.model_source_for(ref)
    log.info("loading model %r with source %s", ref, source.name)
    started = time.perf_counter()
    with using_registry(registry):
        loaded = source.load()(ref, resolved)
    if not isinstance(loaded, LoadedModel):
        raise PluginError(
            f"model source `{source.name}` returned {type(loaded).__name__}, expected LoadedModel",
            "a model source's load(ref, settings) must return kedsl.plugin.LoadedModel",
        )
    loaded.ref = ref
    loaded.source = source.name
    loaded.meta.setdefault("load_seconds", round(time.perf_counter() - started, 3))
    log.info("loaded %r (%s) in %.1f s", ref, loaded.meta.get("path", ref), loaded.meta["load_seconds"])
    return loaded


def saved_dtype(model_dir: str | os.PathLike[str]) -> str:
    """The dtype a saved model directory holds (its ``config.json``), for loading it as
    it was saved; float32 when the config names none or an unusual one."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        raise ModelError(f"{model_dir} has no readable config.json", "is it a saved model directory?") from None
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


def load_saved_model(model_dir: str | os.PathLike[str], registry: Registry | None = None) -> LoadedModel:
    """A saved model directory, loaded by its absolute path in the dtype it was saved in
    (what verification and revert compare bit for bit)."""
    return load_model(str(Path(model_dir).absolute()), {"dtype": saved_dtype(model_dir)}, registry)


# -- shared helpers for sources ----------------------------------------------------------
def load_pretrained(
    path_or_id: str | os.PathLike[str],
    settings: dict[str, Any],
    *,
    source: str,
    meta: dict[str, Any] | None = None,
    local_only: bool = True,
) -> LoadedModel:
    """``from_pretrained`` on a Hugging Face directory (or hub id with ``local_only=False``).

    The config is read first, so an unknown architecture fails before the weights load.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    settings = resolve_settings(settings)  # idempotent; sources may be called directly
    where = str(path_or_id)
    try:
        config = AutoConfig.from_pretrained(where, local_files_only=local_only)
    except ValueError as exc:  # transformers itself does not know the model type
        raise ModelError(f"transformers cannot read the config of `{where}`: {exc}", None) from None
    arch = architecture_for(config.model_type)

    kwargs: dict[str, Any] = {"dtype": settings["dtype"], "local_files_only": local_only}
    for name in ("device_map", "max_memory", "offload_folder"):
        if settings.get(name) is not None:
            kwargs[name] = settings[name]
    model = AutoModelForCausalLM.from_pretrained(where, config=config, **kwargs)
    if settings.get("device_map") is None and settings["device"] != "cpu":
        model = model.to(settings["device"])
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_only)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(
            f"`{where}` has no usable tokenizer: {exc}",
            "save the tokenizer next to the weights (tokenizer.save_pretrained(dir))",
        ) from None
    ensure_pad_token(tokenizer)

    loaded = LoadedModel(model=model, tokenizer=tokenizer, arch=arch, source=source, meta=dict(meta or {}))
    loaded.meta.setdefault("path", where)
    if Path(str(where)).is_dir():  # a kedsl-saved model carries its methods' state
        loaded.method_state = read_method_state(where)
        record_path = Path(where) / MARKER
        if record_path.is_file():
            entries = json.loads(record_path.read_text(encoding="utf-8")).get("attachments") or []
            load_attachments(loaded, Path(where), entries, _active_registry.get() or get_registry())
    try:
        loaded.module(arch.layers)
    except AttributeError:
        raise PluginError(
            f"architecture `{arch.name}` says layers live at `{arch.layers}`, but this {config.model_type} model has no such module",
            "fix the architecture plugin's module paths for this model type",
        ) from None
    return loaded


def architecture_for(model_type: str) -> ArchitectureSpec:
    """The architecture plugin for ``model_type`` from the registry load_model was given."""
    registry = _active_registry.get() or get_registry()
    return registry.architecture_for(model_type)


def ensure_pad_token(tokenizer: Any) -> None:
    """Batching needs a pad token; reuse EOS when there is none (the vocabulary, and so
    the embedding matrix, stay unchanged)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError("the tokenizer has neither a pad nor an end-of-sequence token", "use a tokenizer with an EOS token")
        tokenizer.pad_token = tokenizer.eos_token


def converted_dir(gguf_name: str, sha256: str) -> Path:
    """Where the conversion of a GGUF file with this SHA-256 is cached (may not exist)."""
    return models_dir() / f"{gguf_name}-{sha256[:16]}"


def converted_gguf(gguf: Path, name: str | None = None, sha256: str | None = None) -> tuple[Path, str]:
    """A Hugging Face directory holding ``gguf`` dequantized to float32 safetensors.

    Converted once into ``<cache>/models/<name>-<sha256[:16]>/``; later calls return the
    cached directory. The conversion is written to a temporary sibling and renamed into
    place, so a killed process never leaves a half-written cache. ``sha256`` is the file's
    hash when the caller has already verified it (then the file is not hashed again, and
    need not exist once converted). Returns (dir, sha256).
    """
    gguf = Path(gguf).expanduser().resolve()
    if sha256 is not None and (converted_dir(name or gguf.stem, sha256) / "config.json").is_file():
        return converted_dir(name or gguf.stem, sha256), sha256
    if not gguf.is_file():
        raise ModelError(f"GGUF file `{gguf}` not found", "check the path in your `model` statement")
    sha = sha256 or file_sha256(gguf)
    root = models_dir()
    target = converted_dir(name or gguf.stem, sha)
    if (target / "config.json").is_file():
        log.info("using the converted model cached at %s", target)
        return target, sha
    _remove_stale_temps(root)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (once; cached at %s)", gguf.name, target)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}.tmp-"))
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **_dequantize_kwargs(gguf.name)
            )
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except (ValueError, OSError, KeyError) as exc:
            raise ModelError(
                f"transformers could not read the GGUF file `{gguf}`: {exc}",
                "transformers dequantizes GGUF files of the architectures it supports (llama, mistral, qwen2, gpt2, ...)",
            ) from None
        _drop_gguf_quantizer(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "kedsl-gguf.json").write_text(
            json.dumps({"gguf_file": str(gguf), "gguf_sha256": sha}, indent=2) + "\n", encoding="utf-8"
        )
        fsync_tree(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # another process finished the same conversion first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s in %.1f s", gguf.name, time.perf_counter() - started)
    return target, sha


def _dequantize_kwargs(gguf_name: str) -> dict[str, Any]:
    """Ask for plain dense weights (newer transformers otherwise keep GGUF blocks packed
    when a matmul kernel is installed)."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF files
        return {}
    return {"quantization_config": GgufConfig(gguf_file=gguf_name, dequantize=True)}


def _drop_gguf_quantizer(model: Any) -> None:
    """A dequantized GGUF model is an ordinary dense model, but transformers still marks
    it quantized and refuses to save it; remove the marker once that is verified."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if getattr(quantizer, "packed_modules", None):
        raise ModelError(
            "transformers kept some GGUF weights packed; kedsl needs dense weights to edit",
            "upgrade or downgrade transformers; please report this with `kedsl --version` and your transformers version",
        )
    quantizer.remove_quantization_config(model)


def _remove_stale_temps(root: Path) -> None:
    now = time.time()
    for p in root.glob(".*.tmp-*"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > _STALE_TEMP_S:
                shutil.rmtree(p, ignore_errors=True)


def load_gguf(
    gguf: Path, settings: dict[str, Any], *, source: str, name: str | None = None, sha256: str | None = None
) -> LoadedModel:
    """Convert (once) and load a GGUF file (``sha256``: see :func:`converted_gguf`)."""
    directory, sha = converted_gguf(gguf, name, sha256)
    return load_pretrained(
        directory, settings, source=source, meta={"path": str(directory), "gguf_file": str(gguf), "gguf_sha256": sha}
    )


@contextlib.contextmanager
def using_registry(registry: Registry) -> Iterator[None]:
    """Resolve architectures through ``registry`` inside the block (for code that calls
    the source helpers directly)."""
    token = _active_registry.set(registry)
    try:
        yield
    finally:
        _active_registry.reset(token)
