"""Saving an edited model as a plain Hugging Face directory, atomically.

The directory loads with ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained``; ``kedsl.json`` next to the weights records where it
came from. Everything is written into a temporary sibling, flushed to disk and renamed
into place, so ``out_dir`` is at every moment either the old content or the complete new
one, never a half-written mix. Temporary siblings carry the writer's process id, so a
later save can clear what a killed save left behind (and put back an old output that a
kill caught between its two renames).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import load_file, save_file

from .. import __version__
from ..errors import UsageError
from ..files import fsync_dir, fsync_tree, pid_alive
from .attachments import attachments_digest, detached, save_attachments
from .card import CARD, render_model_card
from .fingerprint import fingerprint_state_dict
from .handle import LoadedModel
from .journal import WeightJournal

log = logging.getLogger(__name__)

#: The marker file of a kedsl output directory (only those are replaced on re-save).
MARKER = "kedsl.json"
FORMAT = "kedsl-model/1"
#: Methods' sequential state (LoadedModel.method_state), keys "method/entry".
STATE_FILE = "kedsl_state.safetensors"


#: ``save to "dir" adapter`` (default): attachments are written beside the untouched
#: weights (removable later); ``merged``: attachments that can be folded into the weights
#: (LoRA adapters) are, the others are still written beside them.
SAVE_MODES = ("adapter", "merged")


def save_model(
    model: LoadedModel,
    out_dir: str | os.PathLike[str],
    provenance: dict[str, Any],
    fingerprint: str | None = None,
    mode: str | None = None,
    finish: Callable[[Path, str], None] | None = None,
) -> Path:
    """Write ``model`` (safetensors weights, config, tokenizer, attachments, ``kedsl.json``)
    to ``out_dir``.

    An existing ``out_dir`` from an earlier kedsl save is replaced atomically; an empty
    directory is filled; any other non-empty directory is refused. Returns the path.
    ``fingerprint`` saves re-hashing the weights when the caller has just computed it
    (it must be the fingerprint of what is written: with ``mode="merged"`` and mergeable
    attachments it is recomputed). ``mode``: see :data:`SAVE_MODES`. ``finish`` is called
    with the complete temporary directory and the fingerprint before it is moved into
    place (the provenance attestation and signature are written there).
    """
    mode = mode or "adapter"
    if mode not in SAVE_MODES:
        raise UsageError(f"unknown save mode `{mode}`", "use one of: " + ", ".join(SAVE_MODES))

    out = Path(out_dir).expanduser().absolute()
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_siblings(out)

    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    try:
        _chmod_like_mkdir(tmp)  # mkdtemp makes it private; the output is an ordinary folder
        log.info("saving model to %s", out)
        deltas, merged = merged_deltas(model, mode)
        with detached(model):  # plain modules and names: what from_pretrained expects
            if deltas:
                with _weights_plus(model, deltas):
                    model.model.save_pretrained(tmp)
                    fingerprint = fingerprint_state_dict(model.model.state_dict())
            else:
                model.model.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
        state_keys = write_method_state(model.method_state, tmp / STATE_FILE)
        entries = save_attachments(model, tmp, skip=merged)
        fingerprint = fingerprint or model.fingerprint()
        record = {
            "format": FORMAT,
            "kedsl_version": __version__,
            "fingerprint": fingerprint,
            "base": {"ref": model.ref, "source": model.source},
            "provenance": provenance,
            "save_mode": mode,
        }
        if state_keys:
            record["method_state"] = {"file": STATE_FILE, "entries": state_keys}
        if entries:
            record["attachments"] = entries
            record["attachments_digest"] = attachments_digest(model)
        if merged:
            record["merged_attachments"] = [model.attachments[i].describe() for i in sorted(merged)]
        (tmp / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        (tmp / CARD).write_text(render_model_card(json.loads(json.dumps(record, default=str))), encoding="utf-8")
        if finish is not None:
            finish(tmp, fingerprint)
        fsync_tree(tmp)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    log.info("saved model to %s", out)
    return out


def merged_deltas(model: LoadedModel, mode: str) -> tuple[dict[str, Any], set[int]]:
    """The weight deltas a save in ``mode`` folds in, and the indices of the attachments
    they come from (nothing unless ``mode == "merged"``)."""
    deltas: dict[str, Any] = {}
    merged: set[int] = set()
    if mode != "merged":
        return deltas, merged
    for i, a in enumerate(model.attachments):
        d = a.merged_deltas(model)
        if d is not None:
            merged.add(i)
            for name, delta in d.items():
                deltas[name] = deltas.get(name, 0) + delta.float()
    return deltas, merged


def saved_fingerprint(model: LoadedModel, mode: str | None) -> str:
    """The fingerprint of the weights a save in ``mode`` writes."""
    deltas, _ = merged_deltas(model, mode or "adapter")
    if not deltas:
        return model.fingerprint()
    with detached(model), _weights_plus(model, deltas):
        return fingerprint_state_dict(model.model.state_dict())


@contextlib.contextmanager
def _weights_plus(model: LoadedModel, deltas: dict[str, Any]) -> Iterator[None]:
    """The model's weights with ``deltas`` added for the duration; the exact originals
    are put back afterwards (through the journal, not by subtracting)."""
    journal = WeightJournal(model.model)
    try:
        for name, delta in deltas.items():
            journal.add_(name, delta)
        yield
    finally:
        journal.rollback()


def write_method_state(state: dict[str, dict[str, Any]], path: Path) -> list[str]:
    """Write methods' sequential state as safetensors (nothing when there is none);
    returns the keys written."""
    flat: dict[str, torch.Tensor] = {}
    for method, entries in state.items():
        for key, value in entries.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"method state {method}/{key} is a {type(value).__name__}; method state must be tensors")
            if "/" in method:
                raise ValueError(f"method name {method!r} contains '/'")
            flat[f"{method}/{key}"] = value.detach().to("cpu").contiguous()
    if flat:
        save_file(flat, str(path))
    return sorted(flat)


def read_method_state(directory: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The methods' state saved beside a model (empty when there is none)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return {}
    state: dict[str, dict[str, Any]] = {}
    for name, value in load_file(str(path)).items():
        method, _, key = name.partition("/")
        state.setdefault(method, {})[key] = value
    return state


def _chmod_like_mkdir(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def _check_target(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"`{out}` exists and is not a directory", "choose another output path")
    if (out / MARKER).is_file() or not any(out.iterdir()):
        return
    raise UsageError(
        f"`{out}` is a non-empty directory that kedsl did not write (it has no {MARKER})",
        "choose a new or empty output directory; kedsl only replaces its own earlier outputs",
    )


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    # Move the old output aside (one rename), put the new one in (one rename), then delete
    # the old; if the second rename fails the old one is put back.
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-{os.getpid()}-"))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def clear_stale_siblings(out: Path) -> list[Path]:
    """Remove the temporary siblings of ``out`` left by saves whose process is gone; if
    ``out`` itself is missing because such a save was killed between moving the old
    output aside and moving the new one in, put the old output back. Returns what was
    removed or restored."""
    touched: list[Path] = []
    for kind in ("old", "tmp"):  # old first: it may have to become `out` again
        for p in sorted(out.parent.glob(f".{out.name}.{kind}-*-*")):
            pid_text = p.name[len(f".{out.name}.{kind}-"):].split("-", 1)[0]
            if not pid_text.isdigit() or pid_alive(int(pid_text)) or not p.is_dir():
                continue
            if kind == "old" and not out.exists() and (p / MARKER).is_file():
                os.rename(p, out)
                log.warning("restored %s from an interrupted save (%s)", out, p.name)
            else:
                shutil.rmtree(p, ignore_errors=True)
                log.info("removed %s left by an interrupted save", p)
            touched.append(p)
    return touched
