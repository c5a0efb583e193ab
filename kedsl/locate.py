"""``kedsl locate``: where a model keeps a fact, by causal tracing, as pictures and numbers.

One fact: a heatmap per kind (hidden, mlp, attn) plus ``trace.json``. A dataset of known
facts (ROME's ``known_1000.json`` format: ``subject``, ``prompt``, ``attribute``): the
facts the model really answers are kept, and the indirect effect at the subject's last
token is averaged per layer, one curve per kind (the paper's average figure).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import DataError, UsageError

log = logging.getLogger(__name__)


@dataclass
class AverageTrace:
    """The dataset average: per kind, the mean indirect effect per layer at the subject's
    last token over ``kept`` facts the model answers correctly (of ``tried``)."""

    model: str
    tried: int
    kept: int
    samples: int
    window: int
    noise_scale: float
    effects: dict[str, list[float]] = field(default_factory=dict)
    facts: list[dict[str, Any]] = field(default_factory=list)

    def peak(self, kind: str) -> int:
        ys = self.effects[kind]
        return max(range(len(ys)), key=ys.__getitem__)

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "tried": self.tried,
            "kept": self.kept,
            "samples": self.samples,
            "window": self.window,
            "noise_scale": self.noise_scale,
            "effects": self.effects,
            "peaks": {k: self.peak(k) for k in self.effects},
            "facts": self.facts,
        }


def trace_fact(model: Any, prompt: str, subject: str, kinds: Sequence[str], out_dir: str | Path | None = None, **kw: Any) -> list[Any]:
    """Trace one fact for each of ``kinds``; with ``out_dir``, write ``trace_<kind>.png``
    and ``trace.json`` there."""
    from .toolkit.tracing import causal_trace

    if subject not in prompt:
        raise UsageError(f"the subject {subject!r} does not occur in the prompt {prompt!r}", "the prompt must contain the subject")
    results = []
    for kind in kinds:
        t = time.perf_counter()
        results.append(causal_trace(model, prompt, subject, kind=kind, **kw))
        log.info("traced %s in %.1fs", kind, time.perf_counter() - t)
    if out_dir is not None:
        from .plots import trace_heatmap

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


def average_trace(
    model: Any,
    records: Sequence[dict[str, Any]],
    kinds: Sequence[str] = ("mlp", "attn"),
    samples: int = 10,
    window: int = 10,
    seed: int = 0,
    bf16: bool | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> AverageTrace:
    """Keep the records the model answers (its greedy continuation starts with the
    attribute), then average the indirect effect at the subject's last token per layer."""
    from .model.generation import generate
    from .toolkit.tokens import subject_token_span
    from .toolkit.tracing import causal_trace, noise_scale

    usable = [r for r in records if r["subject"] in r["prompt"]]
    continuations = generate(model, [r["prompt"] for r in usable], max_new_tokens=4) if usable else []
    known = [r for r, c in zip(usable, continuations) if c.strip().startswith(r["attribute"].strip()) and r["attribute"].strip()]
    if not known:
        raise DataError(f"the model answers none of the {len(records)} facts", "try more records (--limit) or another dataset")
    scale = noise_scale(model, [(r["prompt"], r["subject"]) for r in known])
    sums = {k: [0.0] * model.num_layers for k in kinds}
    facts = []
    for i, r in enumerate(known):
        if progress:
            progress(i, len(known), r["subject"])
        _, span = subject_token_span(model.tokenizer, r["prompt"], r["subject"])
        last = span[-1]
        row: dict[str, Any] = {"subject": r["subject"], "prompt": r["prompt"], "attribute": r["attribute"]}
        for kind in kinds:
            res = causal_trace(model, r["prompt"], r["subject"], kind=kind, samples=samples, window=window, seed=seed + i, scale=scale, bf16=bf16, positions=[last])
            eff = res.effects()[last]
            sums[kind] = [a + b for a, b in zip(sums[kind], eff)]
            row[kind] = eff
            row["clean_prob"], row["corrupted_prob"] = res.clean_prob, res.corrupted_prob
        facts.append(row)
    return AverageTrace(
        model=model.ref,
        tried=len(records),
        kept=len(known),
        samples=samples,
        window=window,
        noise_scale=scale,
        effects={k: [v / len(known) for v in s] for k, s in sums.items()},
        facts=facts,
    )


def write_average(avg: AverageTrace, out_dir: str | Path) -> list[Path]:
    """``average_trace.png`` (one curve per kind) and ``average_trace.json``."""
    from .plots import layer_curves

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
