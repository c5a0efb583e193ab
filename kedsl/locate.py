"""``kedsl locate``: where a model keeps a fact, by causal tracing, as pictures and numbers.

One fact: a heatmap per kind (hidden, mlp, attn) plus ``trace.json``. A dataset of known
facts (ROME's ``known_1000.json`` format: ``subject``, ``prompt``, ``attribute``): the
facts the model really answers are kept, and the indirect effect at the subject's last
token is averaged per layer, one curve per kind (the paper's average figure). The
computation is the toolkit's (:mod:`kedsl.toolkit.tracing`); this module reads the
dataset and writes the pictures and numbers.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import DataError, UsageError
from .model.handle import LoadedModel
from .plots import layer_curves, trace_heatmap
from .toolkit.tracing import AverageTrace, TraceResult, average_trace, causal_trace

__all__ = ["AverageTrace", "average_trace", "read_known_facts", "trace_fact", "write_average"]

log = logging.getLogger(__name__)


def trace_fact(model: LoadedModel, prompt: str, subject: str, kinds: Sequence[str], out_dir: str | Path | None = None, **kw: Any) -> list[TraceResult]:
    """Trace one fact for each of ``kinds``; with ``out_dir``, write ``trace_<kind>.png``
    and ``trace.json`` there."""
    if subject not in prompt:
        raise UsageError(f"the subject {subject!r} does not occur in the prompt {prompt!r}", "the prompt must contain the subject")
    results = []
    for kind in kinds:
        t = time.perf_counter()
        results.append(causal_trace(model, prompt, subject, kind=kind, **kw))
        log.info("traced %s in %.1fs", kind, time.perf_counter() - t)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for r in results:
            trace_heatmap(r, out / f"trace_{r.kind}.png")
        (out / "trace.json").write_text(json.dumps({"model": model.ref, "traces": [r.as_json() for r in results]}, indent=1))
    return results


def read_known_facts(path: str | Path) -> list[dict[str, Any]]:
    """Records with ``subject``, ``prompt`` and ``attribute`` (ROME's known_1000.json)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"no such file: {path}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}", "expected a JSON list of {subject, prompt, attribute} records") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) and {"subject", "prompt", "attribute"} <= r.keys() for r in data):
        raise DataError(f"{path} is not a list of records with subject, prompt and attribute", "use ROME's known_1000.json format")
    return data


def write_average(avg: AverageTrace, out_dir: str | Path) -> list[Path]:
    """``average_trace.png`` (one curve per kind) and ``average_trace.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = layer_curves(
        avg.effects,
        f"{avg.model}: average indirect effect at the subject's last token\n"
        f"{avg.kept} known facts (of {avg.tried} tried), {avg.samples} noise samples, window {avg.window}",
        "indirect effect on p(answer)",
        out / "average_trace.png",
        highlight=avg.peak("mlp") if "mlp" in avg.effects else None,
    )
    js = out / "average_trace.json"
    js.write_text(json.dumps(avg.as_json(), indent=1))
    return [png, js]
