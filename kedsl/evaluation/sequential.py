"""Long sequential benchmarks: the degradation curve and checkpoints a killed run resumes from.

``kedsl bench --mode sequential --checkpoints N`` measures the model every ``N`` edits
(at the end of the turn that reaches each multiple of ``N``), over every edit made so far:
the curve of efficacy, generalization, locality, ... as the edits accumulate. Metrics that
generate text (fluency, efficacy_gen) cost a generation per case, so at a checkpoint they
are measured on an evenly spaced sample of at most :data:`GENERATION_SAMPLE` of the edits
so far; each point records how many cases each value averages. The last point is the
run's final measurement of every case (taken once, for the table and the curve).

With ``--checkpoint-dir DIR`` each checkpoint also saves what the run needs to continue:
the current values of every weight an edit has touched, the method state, the
attachments, and the records and curve so far. A run started again with the same
arguments and directory resumes after the last checkpoint and, the edits being
deterministic, ends with the same fingerprint as a run that was never interrupted.
Memory and disk stay bounded by the touched weights and the method's own state: nothing
per edit is kept but its record.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import UsageError
from ..records import jsonable

log = logging.getLogger(__name__)

#: Cases a generation metric measures at one checkpoint (spread over the edits so far).
GENERATION_SAMPLE = 100
GENERATION_METRICS = ("fluency", "fluency_unrelated", "efficacy_gen")

LATEST = "latest.json"
WEIGHTS_FILE = "weights.safetensors"
ATTACHMENTS = "attachments"


def checkpoint_due(before: int, after: int, total: int, every: int) -> bool:
    """Whether the turn that took the edit count from ``before`` to ``after`` passed a
    multiple of ``every`` or finished the run (a turn that passes several gives one point,
    at its end)."""
    return after // every > before // every or after == total


def spread_sample(idx: Sequence[int], count: int) -> list[int]:
    """At most ``count`` items of ``idx``, evenly spaced, first and last included."""
    if len(idx) <= count:
        return list(idx)
    step = (len(idx) - 1) / (count - 1)
    return [idx[round(i * step)] for i in range(count)]


def curve_point(
    edits: int,
    idx: Sequence[int],
    metrics: Sequence[str],
    measure: Callable[[str, list[int]], list[Any]],
    seconds: float,
) -> dict[str, Any]:
    """One point of the curve: each metric's mean over the cases ``idx`` (edited so far;
    a generation metric over a sample of them). ``measure(metric, idx)`` returns the
    metric's results for those cases."""
    values: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for m in metrics:
        chosen = spread_sample(idx, GENERATION_SAMPLE) if m in GENERATION_METRICS else list(idx)
        results = measure(m, chosen) if chosen else []
        vals = [r.value for r in results if r.value is not None]
        values[m] = sum(vals) / len(vals) if vals else None
        counts[m] = len(vals)
    return point(edits, seconds, values, counts)


def point(edits: int, seconds: float, values: dict[str, float | None], counts: dict[str, int]) -> dict[str, Any]:
    """A curve point: the edits so far, the method's seconds so far, each metric's mean and
    how many cases it averages."""
    return {"edits": edits, "seconds": seconds, "metrics": values, "n": counts}


# -- checkpoints -----------------------------------------------------------------------------
def run_key(config: dict[str, Any]) -> str:
    """What a resumed run must share with the run that saved the checkpoint."""
    keys = ("model_fingerprint", "method", "params", "mode", "batch_size", "seed", "data_sha256", "cases_digest", "checkpoints")
    return hashlib.sha256(json.dumps({k: config.get(k) for k in keys}, sort_keys=True, default=str).encode()).hexdigest()


def save_checkpoint(directory: Path, key: str, done_groups: int, progress: dict[str, Any], model: Any, touched: set[str], method: str, state: dict[str, Any]) -> Path:
    """Write a checkpoint after ``done_groups`` turns into ``directory`` (a new folder,
    then the pointer ``latest.json`` replaced atomically; older folders removed)."""
    from safetensors.torch import save_file

    from ..model.attachments import save_attachments
    from ..model.saving import STATE_FILE, write_method_state

    directory.mkdir(parents=True, exist_ok=True)
    folder = directory / f"ckpt-{done_groups:06d}"
    if folder.exists():
        shutil.rmtree(folder)
    tmp = directory / f".{folder.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {name: model.read_weight(name).to("cpu").contiguous() for name in sorted(touched)}
    if weights:
        save_file(weights, str(tmp / WEIGHTS_FILE))
    state_entries = write_method_state({method: state}, tmp / STATE_FILE) if state else []
    attachments = save_attachments(model, tmp / ATTACHMENTS) if model.attachments else []
    (tmp / "progress.json").write_text(json.dumps(jsonable({
        "key": key, "done_groups": done_groups, "touched": sorted(touched), "state_entries": state_entries,
        "attachments": attachments, **progress,
    })), encoding="utf-8")  # fmt: skip
    _fsync_tree(tmp)
    tmp.rename(folder)
    pointer = directory / (LATEST + ".tmp")
    pointer.write_text(json.dumps({"folder": folder.name, "done_groups": done_groups}), encoding="utf-8")
    _fsync(pointer)
    os.replace(pointer, directory / LATEST)
    for old in directory.glob("ckpt-*"):
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint after %d turn(s): %s", done_groups, folder)
    return folder


def load_checkpoint(directory: Path, key: str, model: Any, method: str, registry: Any) -> tuple[int, dict[str, Any], set[str], dict[str, Any]] | None:
    """Restore the last checkpoint in ``directory`` onto ``model`` (the unedited base):
    the touched weights, the attachments; returns (turns done, progress, touched names,
    method state), or None when the directory holds no checkpoint."""
    import torch
    from safetensors.torch import load_file

    from ..model.attachments import load_attachments
    from ..model.saving import read_method_state

    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    folder = directory / json.loads(pointer.read_text(encoding="utf-8"))["folder"]
    progress = json.loads((folder / "progress.json").read_text(encoding="utf-8"))
    if progress["key"] != key:
        raise UsageError(
            f"{directory} holds a checkpoint of a different run (model, method, parameters, data or checkpoints differ)",
            "resume with the same arguments, or give a new --checkpoint-dir",
        )
    if progress["touched"]:
        saved = load_file(str(folder / WEIGHTS_FILE))
        with torch.no_grad():
            for name in progress["touched"]:
                model.write_weight(name, saved[name])
    state = read_method_state(folder).get(method, {}) if progress["state_entries"] else {}
    if progress["attachments"]:
        load_attachments(model, folder / ATTACHMENTS, progress["attachments"], registry)
    log.info("resumed after %d turn(s) from %s", progress["done_groups"], folder)
    return int(progress["done_groups"]), progress, set(progress["touched"]), state


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            _fsync(p)
