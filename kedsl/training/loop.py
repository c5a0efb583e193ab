"""``kedsl train``: the training loop every trainable editor shares.

- **Data**: every record of the ``--data`` files (any benchmark layout kedsl reads) becomes
  a :class:`~kedsl.training.trainer.TrainingExample`; validation examples come from
  ``--val``, else the last ``val_size`` training examples are held back for it.
- **Order**: the examples of epoch ``e`` are shuffled by a generator seeded with
  ``(seed, e)``, and step ``s`` takes the next ``batch_size`` of them: the batch of every
  step is a function of the seed and the step alone, so a resumed run sees exactly the
  batches an uninterrupted one would. torch is seeded with ``seed + step`` before each step.
- **Optimisation**: Adam on the trainer's parameters, gradients clipped to ``grad_clip``.
- **Validation** every ``val_every`` steps: the trainer's ``score`` (higher is better);
  the best parameters are kept, and training stops early after ``patience`` validations
  without a better score.
- **Budgets**: ``max_steps``, ``max_minutes`` (the time of every run of the same training
  added up).
- **Checkpoints** every ``checkpoint_every`` steps and at every validation: one
  safetensors file (parameters, buffers, Adam's state, the best parameters, and the loop's
  state as JSON in its metadata), written under a temporary name and renamed, so a kill -9
  leaves the previous checkpoint whole. Running the same command again resumes from it; a
  command with other settings, data or base model is refused rather than mixed in.
- **Result**: ``OUT/editor.safetensors`` + ``OUT/editor.json`` (:mod:`.editors`) and
  ``OUT/curve.png``; every invocation is a run of kind ``train`` in the provenance store,
  whose specification (data files and their SHA-256, hyper-parameters, base fingerprint)
  is its script text, and the editor lists those runs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import __version__
from ..errors import DataError, UsageError
from ..evaluation.datasets import read_cases
from ..evaluation.runner import data_sha256
from ..files import fsync_dir
from ..model.handle import LoadedModel
from ..plots import training_curve
from ..records import canonical_json
from ..registry import Registry
from ..registry.loader import software_versions
from ..registry.params import resolve_params
from ..registry.specs import load_object
from ..toolkit.stats import base_fingerprint
from ..registry.editors import EDITOR_CONFIG, EDITOR_TENSORS, FORMAT
from .editors import file_sha256
from .trainer import Trainer, TrainingExample

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
CURVE = "curve.png"

#: progress(step, total_steps, message)
Progress = Callable[[int, int, str], None]


@dataclass
class LoopSettings:
    """The loop's own settings (the trainer's hyper-parameters are its config's)."""

    batch_size: int = 4
    lr: float = 1e-4
    max_steps: int = 2000
    max_minutes: float | None = None
    val_every: int = 100
    val_size: int = 50
    patience: int = 5
    checkpoint_every: int = 25
    grad_clip: float = 1.0
    seed: int = 0

    def check(self) -> None:
        for name in ("batch_size", "max_steps", "val_every", "val_size", "patience", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0 or self.grad_clip <= 0 or (self.max_minutes is not None and self.max_minutes <= 0):
            raise UsageError("--lr, the gradient clip and --max-minutes must be positive")


@dataclass
class LoopState:
    """What a checkpoint holds besides tensors."""

    step: int = 0
    curve: list[dict[str, Any]] = field(default_factory=list)
    best_score: float | None = None
    best_step: int | None = None
    bad_validations: int = 0
    seconds: float = 0.0
    stopped: str | None = None
    runs: list[str] = field(default_factory=list)
    interval_loss: float = 0.0  # the training loss summed since the last validation
    interval_steps: int = 0


def examples_from(paths: Sequence[str | Path]) -> list[TrainingExample]:
    """Every usable record of ``paths`` as training examples (skipped records are logged)."""
    out: list[TrainingExample] = []
    for path in paths:
        for c in read_cases(path).cases:
            out.append(TrainingExample(
                subject=c.request.subject, prompt=c.request.prompt, target=c.request.target,
                paraphrases=list(c.request.paraphrases), locality=[(p, a) for p, a in c.case.locality if a], index=c.index,
            ))  # fmt: skip
    return out


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The examples of ``step``: positions ``step * batch_size`` onwards in the sequence of
    epochs, each a permutation seeded with ``(seed, epoch)``."""
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, at = divmod(position, n)
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(order[at])
    return out


def train(
    model: LoadedModel,
    registry: Registry,
    method: str,
    data: Sequence[str | Path],
    out_dir: str | Path,
    *,
    val: str | Path | None = None,
    params: dict[str, Any] | None = None,
    settings: LoopSettings | None = None,
    store: Any = None,
    argv: list[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train ``method``'s editor for ``model`` and write it to ``out_dir``; returns the
    editor's JSON. Resumes from ``out_dir``'s checkpoint when it was made by the same
    training (a finished one is returned as it is)."""
    settings = settings or LoopSettings()
    settings.check()
    say = progress or (lambda step, total, msg: None)
    spec = registry.method(method)
    if spec.trainer is None:
        trainable = sorted(n for n, s in registry.methods.items() if s.trainer)
        raise UsageError(f"method `{method}` has no editor to train", ("trainable methods: " + ", ".join(trainable)) if trainable else "no installed method trains an editor")
    trainer_class: type[Trainer] = load_object(spec.trainer)
    hparams_given = dict(params or {})
    resolved = resolve_params(trainer_class.config.params(), hparams_given)
    hparams = trainer_class.config.from_params(resolved, settings.seed)
    if not data:
        raise UsageError("kedsl train needs at least one --data file")
    # resolved: one file has one name (and a resumed run one identity) however it was given
    files = [{"path": str(Path(p).resolve()), "sha256": data_sha256(p)} for p in data]
    val_file = {"path": str(Path(val).resolve()), "sha256": data_sha256(val)} if val is not None else None
    training_spec = {
        "method": method, "base_model": {"ref": model.ref, "fingerprint": base_fingerprint(model)}, "data": files,
        "val": val_file, "hparams": {k: v for k, v in asdict(hparams).items()}, "loop": asdict(settings),
    }  # fmt: skip
    # What a resumed run must share with the interrupted one (budgets may grow).
    identity = {**training_spec, "loop": {k: v for k, v in asdict(settings).items() if k not in ("max_steps", "max_minutes")}}
    identity_key = hashlib.sha256(canonical_json(identity).encode()).hexdigest()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    finished = out / EDITOR_CONFIG
    if finished.is_file():
        done = json.loads(finished.read_text(encoding="utf-8"))
        if done.get("identity") == identity_key and (done.get("stopped") == "early" or done.get("steps", 0) >= settings.max_steps):
            say(done["steps"], settings.max_steps, f"already trained (stopped: {done['stopped']}), kept")
            return done

    examples = examples_from(data)
    if val is not None:
        val_examples = examples_from([val])[: settings.val_size]
    else:
        if len(examples) <= settings.val_size:
            raise DataError(f"{len(examples)} training examples cannot spare {settings.val_size} for validation", "pass --val FILE")
        examples, val_examples = examples[: -settings.val_size], examples[-settings.val_size :]
    if not examples or not val_examples:
        raise DataError("no training or validation examples in the given files")

    trainer = trainer_class(model, hparams)
    trained = trainer.parameters()
    names = sorted(trained)
    optimizer = torch.optim.Adam(param_groups(trainer, names, settings.lr), lr=settings.lr)
    state = LoopState()
    best: dict[str, torch.Tensor] = {n: trained[n].detach().clone() for n in names}
    ckpt = out / CHECKPOINT
    if ckpt.is_file():
        state, best = _resume(ckpt, identity_key, trainer, names, optimizer)
        say(state.step, settings.max_steps, f"resuming at step {state.step}")
    run_id = None
    if store is not None:
        text = canonical_json(training_spec)
        run_id = store.begin_run(
            kind="train", script_path=str(out.absolute()), script_text=text, script_sha256=hashlib.sha256(text.encode()).hexdigest(),
            argv=argv if argv is not None else sys.argv, cwd=os.getcwd(), versions=software_versions(registry),
            seed=settings.seed, model_ref=model.ref, model_source=model.source, model_path=model.meta.get("path"),
            fingerprint_before=base_fingerprint(model),
        )  # fmt: skip
        state.runs.append(run_id)
    status, error = "failed", None
    try:
        _loop(trainer, examples, val_examples, names, optimizer, state, best, settings, identity_key, ckpt, say)
        editor = _write_editor(out, trainer, best, names, state, training_spec, identity_key, store, run_id, model)
        status = "ok"
        return editor
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user"
        raise
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if store is not None and run_id is not None:
            store.end_run(run_id, status, saved_to=str(out.absolute()) if status == "ok" else None, error=error)


def param_groups(trainer: Trainer, names: list[str], lr: float) -> list[dict[str, Any]]:
    """Adam's parameter groups: one per learning rate, in the order of ``names``."""
    rates = trainer.learning_rates(lr)
    unknown = sorted(set(rates) - set(names))
    if unknown:
        raise RuntimeError(f"learning rates for tensors the trainer does not train: {unknown}")
    groups: dict[float, list[torch.nn.Parameter]] = {}
    trained = trainer.parameters()
    for n in names:
        groups.setdefault(float(rates.get(n, lr)), []).append(trained[n])
    return [{"params": params, "lr": rate} for rate, params in groups.items()]


def _loop(trainer: Trainer, examples: list[TrainingExample], val_examples: list[TrainingExample], names: list[str],
          optimizer: torch.optim.Optimizer, state: LoopState, best: dict[str, torch.Tensor], settings: LoopSettings,
          identity_key: str, ckpt: Path, say: Progress) -> None:  # fmt: skip
    trained = trainer.parameters()
    started, seconds_before = time.perf_counter(), state.seconds
    budget_s = settings.max_minutes * 60 if settings.max_minutes else None
    if not state.curve:  # the score before any training, so the curve starts at the beginning
        _validate(trainer, val_examples, state, best, trained, names, settings, loss=None)
    while state.stopped is None:
        if state.step >= settings.max_steps:
            state.stopped = "max_steps"
            break
        state.seconds = seconds_before + time.perf_counter() - started
        if budget_s is not None and state.seconds >= budget_s:
            state.stopped = "max_minutes"
            break
        torch.manual_seed(settings.seed + state.step)
        batch = [examples[i] for i in batch_indices(len(examples), settings.batch_size, state.step, settings.seed)]
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss, parts = trainer.loss(batch)
            loss.backward()
        torch.nn.utils.clip_grad_norm_([trained[n] for n in names], settings.grad_clip)
        optimizer.step()
        state.step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"the training loss is {value} at step {state.step}")
        state.interval_loss += value
        state.interval_steps += 1
        state.seconds = seconds_before + time.perf_counter() - started
        if state.step % settings.val_every == 0:
            _validate(trainer, val_examples, state, best, trained, names, settings, loss=value, parts=parts)
            _checkpoint(ckpt, trainer, names, optimizer, state, best, identity_key)
        elif state.step % settings.checkpoint_every == 0:
            _checkpoint(ckpt, trainer, names, optimizer, state, best, identity_key)
        if state.step % 10 == 0 or state.step == 1:
            last = state.curve[-1]
            shown = " ".join(f"{k} {v:.3f}" for k, v in parts.items())
            say(state.step, settings.max_steps,
                f"loss {value:.4f} ({shown}); validation score {last['score']:.4f} at step {last['step']}; ETA {_eta(state, settings)}")  # fmt: skip
    if not state.curve or state.curve[-1]["step"] != state.step:
        _validate(trainer, val_examples, state, best, trained, names, settings, loss=None)
    _checkpoint(ckpt, trainer, names, optimizer, state, best, identity_key)


def _eta(state: LoopState, settings: LoopSettings) -> str:
    per_step = state.seconds / max(1, state.step)
    remaining = per_step * (settings.max_steps - state.step)
    if settings.max_minutes:
        remaining = min(remaining, settings.max_minutes * 60 - state.seconds)
    return f"{max(0.0, remaining) / 60:.1f} min"


def _validate(trainer: Trainer, val_examples: list[TrainingExample], state: LoopState, best: dict[str, torch.Tensor],
              trained: dict[str, torch.nn.Parameter], names: list[str], settings: LoopSettings, loss: float | None,
              parts: dict[str, float] | None = None) -> None:  # fmt: skip
    with torch.no_grad():
        numbers = trainer.validate(val_examples)
    score = float(numbers["score"])
    mean = state.interval_loss / state.interval_steps if state.interval_steps else None
    state.interval_loss, state.interval_steps = 0.0, 0
    state.curve.append({"step": state.step, "loss": loss, "train_loss_mean": mean, **(parts or {}),
                        **{f"val_{k}": float(v) for k, v in numbers.items()}, "score": score, "seconds": round(state.seconds, 1)})  # fmt: skip
    if state.best_score is None or score > state.best_score:
        state.best_score, state.best_step, state.bad_validations = score, state.step, 0
        for n in names:
            best[n] = trained[n].detach().clone()
    elif state.step > 0:
        state.bad_validations += 1
        if state.bad_validations >= settings.patience:
            state.stopped = "early"
    log.info("validation at step %d: %s", state.step, numbers)


def _checkpoint(path: Path, trainer: Trainer, names: list[str], optimizer: torch.optim.Optimizer, state: LoopState,
                best: dict[str, torch.Tensor], identity_key: str) -> None:  # fmt: skip
    tensors: dict[str, torch.Tensor] = {}
    trained = trainer.parameters()
    for n in names:
        tensors[f"param/{n}"] = trained[n].detach().cpu().contiguous()
        tensors[f"best/{n}"] = best[n].detach().cpu().contiguous()
    for n, b in trainer.buffers().items():
        tensors[f"buffer/{n}"] = b.detach().cpu().contiguous()
    for n in names:
        for key, value in optimizer.state.get(trained[n], {}).items():
            tensors[f"adam/{n}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    meta = {"state": json.dumps(asdict(state)), "identity": identity_key}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _resume(path: Path, identity_key: str, trainer: Trainer, names: list[str], optimizer: torch.optim.Optimizer) -> tuple[LoopState, dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if meta.get("identity") != identity_key:
        raise UsageError(
            f"{path} was written by another training (other data, settings or base model)",
            "pass another --out, or delete the checkpoint to start over",
        )
    trained, buffers = trainer.parameters(), trainer.buffers()
    with torch.no_grad():
        for n in names:
            trained[n].copy_(tensors[f"param/{n}"])
        for n, b in buffers.items():
            b.copy_(tensors[f"buffer/{n}"])
    for n in names:
        entries = {key.rsplit("/", 1)[1]: t for key, t in tensors.items() if key.startswith(f"adam/{n}/")}
        if entries:
            optimizer.state[trained[n]] = entries
    best = {n: tensors[f"best/{n}"].clone() for n in names}
    state = LoopState(**json.loads(meta["state"]))
    state.stopped = None if state.stopped in ("max_steps", "max_minutes") else state.stopped  # a larger budget goes on
    return state, best


def _write_editor(out: Path, trainer: Trainer, best: dict[str, torch.Tensor], names: list[str], state: LoopState,
                  training_spec: dict[str, Any], identity_key: str, store: Any, run_id: str | None, model: LoadedModel) -> dict[str, Any]:  # fmt: skip
    tensors = {n: best[n].detach().cpu().contiguous() for n in names}
    buffers = {n: b.detach().cpu().contiguous() for n, b in trainer.buffers().items()}
    clash = set(tensors) & set(buffers)
    if clash:
        raise RuntimeError(f"trainer names {sorted(clash)} both as parameters and buffers")
    tmp = out / f".{EDITOR_TENSORS}.tmp{os.getpid()}"
    save_file({**tensors, **buffers}, str(tmp))
    os.replace(tmp, out / EDITOR_TENSORS)
    editor = {
        "format": FORMAT,
        "kedsl_version": __version__,
        **training_spec,
        "trainer": trainer.describe(),
        "tensors": {"parameters": names, "buffers": sorted(buffers)},
        "sha256": file_sha256(out / EDITOR_TENSORS),
        "steps": state.step,
        "best_step": state.best_step,
        "best_score": state.best_score,
        "stopped": state.stopped,
        "wall_seconds": round(state.seconds, 1),
        "curve": state.curve,
        "train_runs": state.runs,
        # relative to the editor's folder, so a copied project still finds it
        "database": os.path.relpath(Path(store.path).absolute(), out.absolute()) if store is not None else None,
        "identity": identity_key,
    }
    tmp_json = out / f".{EDITOR_CONFIG}.tmp{os.getpid()}"
    tmp_json.write_text(json.dumps(editor, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_json, out / EDITOR_CONFIG)
    try:
        training_curve(state.curve, f"{training_spec['method']} on {model.ref}", out / CURVE)
    except Exception as exc:  # the picture is a convenience: its failure must not lose a trained editor
        log.warning("could not draw %s: %s", out / CURVE, exc)
    return editor
