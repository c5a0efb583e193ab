"""Training editors from Python: :func:`train`, as ``kedsl train``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import UsageError
from ..registry import Registry, get_registry
from .scripts import default_db_path


def parse_trainer_params(method: str, args: Sequence[str], registry: Registry | None = None) -> dict[str, Any]:
    """``["rank=256", ...]`` typed and checked against ``method``'s trainer's hyper-parameters."""
    from ..evaluation.runner import parse_param_args
    from ..registry.specs import MethodSpec, load_object

    registry = registry or get_registry()
    spec = registry.method(method)
    if spec.trainer is None:
        raise UsageError(f"method `{method}` has no editor to train", "methods with one: " + ", ".join(sorted(n for n, s in registry.methods.items() if s.trainer)))
    trainer_config = load_object(spec.trainer).config
    return parse_param_args(MethodSpec(name=method, implementation=spec.trainer, config=trainer_config), args)


def train(
    method: str,
    *,
    model: str | Any = "smollm2-135m",
    data: Sequence[str | Path],
    out: str | Path,
    val: str | Path | None = None,
    params: dict[str, Any] | None = None,
    max_steps: int = 2000,
    max_minutes: float | None = None,
    batch_size: int = 4,
    lr: float = 1e-4,
    val_every: int = 100,
    val_size: int = 50,
    patience: int = 5,
    seed: int = 0,
    db: str | Path | None = None,
    registry: Registry | None = None,
    argv: list[str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Train ``method``'s editor for ``model`` (an alias, a path or a loaded model); returns
    the editor's JSON (also written to ``out/editor.json``)."""
    from ..model.loading import load_model
    from ..provenance.store import Store
    from ..training.loop import LoopSettings
    from ..training.loop import train as run_training

    registry = registry or get_registry()
    settings = LoopSettings(batch_size=batch_size, lr=lr, max_steps=max_steps, max_minutes=max_minutes, val_every=val_every,
                            val_size=val_size, patience=patience, checkpoint_every=min(25, val_every), seed=seed)  # fmt: skip
    settings.check()
    registry.method(method)
    with Store.open(db if db is not None else default_db_path()) as store:
        loaded = load_model(model, {}, registry) if isinstance(model, str) else model
        return run_training(loaded, registry, method, data, out, val=val, params=params, settings=settings, store=store,
                            argv=argv, progress=progress)  # fmt: skip
