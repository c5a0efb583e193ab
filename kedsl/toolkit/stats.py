"""Second-moment statistics ``C = E[k kᵀ]`` of a layer's MLP-output-projection inputs.

ROME, MEMIT and AlphaEdit weight their updates by ``C``, computed over a text corpus.
Corpora (``corpus=``):

* ``"model"`` (default): text **sampled from the model itself** with a fixed seed
  (top-k 50, 128-token documents). There is no Wikipedia offline; the model's own text is
  a reasonable stand-in for "what the keys usually look like". The sampled texts are
  cached on disk too, so computing more layers later does not sample again.
* a local ``.txt`` (one document per non-empty line) or ``.jsonl`` (a ``text`` field) file;
* any other string is taken as a ``datasets`` dataset name (``name`` or ``name:config``,
  split ``train``, a ``text`` field), loaded from the local datasets cache.

``samples`` counts **key vectors** (tokens), not documents. Results are stored as
safetensors (never pickle) under :func:`kedsl.cache.stats_dir`, keyed by the model's base
fingerprint, layer, corpus id and sample count. Several layers are computed in one pass
over the corpus, and the forward pass stops after the deepest layer asked for.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..cache import stats_dir
from ..errors import DataError
from ..model.handle import LoadedModel
from .activations import StopForward, hooked, make_batch, pad_id
from .context import sample_token_rows

log = logging.getLogger(__name__)

MODEL_CORPUS = "model"
MODEL_DOC_TOKENS = 128


def stats_root() -> Path:
    """``$KEDSL_STATS_DIR`` if set, else the kedsl cache's stats dir (created)."""
    return stats_dir(create=True)


def base_fingerprint(model: LoadedModel) -> str:
    """The fingerprint of the weights as first seen by the toolkit (memoised in
    ``model.meta``), so sequential edits keep using the unedited model's statistics,
    as ROME and MEMIT do."""
    fp = model.meta.get("base_fingerprint")
    if fp is None:
        t = time.perf_counter()
        fp = model.meta["base_fingerprint"] = model.fingerprint()
        log.debug("fingerprint in %.1fs", time.perf_counter() - t)
    return str(fp)


def corpus_id(corpus: str, seed: int) -> str:
    """A short stable id for the cache key."""
    if corpus == MODEL_CORPUS:
        return f"model-seed{seed}"
    p = Path(corpus).expanduser()
    if p.exists():
        h = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        return f"file-{h}"
    return "ds-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in corpus)


#: Where statistics are taken: the inputs of the MLP's output projection (the keys of the
#: ROME family), or the MLP's input (what its input projections read: the normed hidden state).
SITES = ("mlp_out", "mlp_in")


def site_path(model: LoadedModel, layer: int, site: str = "mlp_out") -> str:
    """The module whose input a site's statistics describe."""
    if site not in SITES:
        raise AssertionError(f"unknown statistics site {site!r}")
    return (model.arch.mlp_out if site == "mlp_out" else model.arch.mlp).format(layer)


def stats_path(model: LoadedModel, layer: int, corpus: str, samples: int, seed: int = 0, site: str = "mlp_out") -> Path:
    fp = base_fingerprint(model)[:16]
    return stats_root() / f"{fp}-{site_path(model, layer, site)}-{corpus_id(corpus, seed)}-n{samples}.safetensors"


def _model_corpus_rows(model: LoadedModel, samples: int, seed: int) -> list[list[int]]:
    """Token rows sampled from the model (cached as JSONL next to the statistics)."""
    n_docs = -(-samples // MODEL_DOC_TOKENS)
    path = stats_root() / f"{base_fingerprint(model)[:16]}-corpus-seed{seed}-docs{n_docs}x{MODEL_DOC_TOKENS}-fp32.jsonl"
    if path.exists():
        return [json.loads(line)["ids"] for line in path.read_text().splitlines() if line]
    log.info("sampling %d documents of %d tokens from the model for statistics (one time)", n_docs, MODEL_DOC_TOKENS)
    t = time.perf_counter()
    # float32: the same corpus on every CPU (bf16 sampling would depend on the hardware)
    rows = sample_token_rows(model, n_docs, MODEL_DOC_TOKENS, seed=seed, top_k=50)
    log.info("sampled the corpus in %.1fs", time.perf_counter() - t)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"ids": r}) + "\n" for r in rows))
    tmp.replace(path)
    return rows


def _text_rows(model: LoadedModel, corpus: str, samples: int, max_len: int) -> Iterable[list[int]]:
    p = Path(corpus).expanduser()
    if p.exists():
        if p.suffix == ".jsonl":
            texts: Iterable[str] = (json.loads(l)["text"] for l in p.read_text().splitlines() if l.strip())
        else:
            texts = (l for l in p.read_text().splitlines() if l.strip())
    else:
        try:
            import datasets

            name, _, config = corpus.partition(":")
            ds = datasets.load_dataset(name, config or None, split="train")
        except Exception as e:  # noqa: BLE001 - any failure means the corpus is unusable
            raise DataError(
                f"statistics corpus {corpus!r} is neither a file nor a loadable dataset ({e})",
                'use corpus "model" (text sampled from the model), a .txt/.jsonl file, or a cached datasets name',
            ) from e
        texts = (r["text"] for r in ds if r["text"].strip())
    total = 0
    for text in texts:
        ids = model.tokenizer(text, add_special_tokens=True)["input_ids"][:max_len]
        if not ids:
            continue
        yield ids
        total += len(ids)
        if total >= samples:
            return
    if total < samples:
        raise DataError(
            f"statistics corpus {corpus!r} has only {total} tokens; {samples} were asked for",
            "use a larger corpus or fewer mom2_samples",
        )


@torch.no_grad()
def second_moments(
    model: LoadedModel,
    layers: Sequence[int],
    corpus: str = MODEL_CORPUS,
    samples: int = 32768,
    seed: int = 0,
    batch_tokens: int = 4096,
    max_len: int = 256,
    site: str = "mlp_out",
) -> dict[int, torch.Tensor]:
    """``{layer: C}`` with ``C = E[k kᵀ]`` (float32, on the model's device) of the MLP output
    projection's inputs (``site="mlp_in"``: of the MLP's inputs) over ``samples`` tokens of
    ``corpus``. Cached on disk; layers not cached are computed together in one pass over
    the corpus."""
    from safetensors.torch import load_file, save_file

    for l in layers:
        model.check_layer(l)
    out: dict[int, torch.Tensor] = {}
    missing = []
    for l in sorted(set(layers)):
        path = stats_path(model, l, corpus, samples, seed, site)
        if path.exists():
            out[l] = load_file(str(path))["mom2"].to(model.device)
            log.debug("statistics cache hit: %s", path.name)
        else:
            missing.append(l)
    if not missing:
        return out

    if corpus == MODEL_CORPUS:
        rows: Iterable[list[int]] = _model_corpus_rows(model, samples, seed)
    else:
        rows = _text_rows(model, corpus, samples, max_len)

    paths = {l: site_path(model, l, site) for l in missing}
    sums: dict[int, torch.Tensor] = {}
    counts = {l: 0 for l in missing}
    deepest = model.layer(max(missing))
    current_mask: list[torch.Tensor] = []
    remaining = [samples]

    def make_pre(l: int):
        def pre(m: torch.nn.Module, args: tuple) -> None:
            x = args[0]
            mask = current_mask[0]
            k = x[mask.bool()].float()[: remaining[0]]
            if l not in sums:
                sums[l] = torch.zeros(k.shape[-1], k.shape[-1], dtype=torch.float64, device=k.device)
            sums[l] += (k.T @ k).double()
            counts[l] += k.shape[0]
        return pre

    def stop(*_: Any) -> None:
        raise StopForward

    log.info("computing second moments for layers %s over %d tokens of corpus %r", missing, samples, corpus)
    t0 = time.perf_counter()
    last_log = t0
    pad = pad_id(model.tokenizer)
    with hooked() as hs:
        for l in missing:
            hs.append(model.module(paths[l]).register_forward_pre_hook(make_pre(l)))
        hs.append(deepest.register_forward_hook(stop))
        pending: list[list[int]] = []
        pending_tokens = 0

        def flush() -> None:
            batch = make_batch(pending, pad, model.device, side="right")
            current_mask[:] = [batch.attention_mask]
            try:
                with torch.autocast("cpu", enabled=False):
                    model.model(**batch.inputs(), use_cache=False)
            except StopForward:
                pass
            remaining[0] -= int(batch.attention_mask.sum())
            pending.clear()

        for ids in rows:
            if remaining[0] <= 0:
                break
            pending.append(ids)
            pending_tokens += len(ids)
            if pending_tokens >= batch_tokens:
                flush()
                pending_tokens = 0
                now = time.perf_counter()
                if now - last_log > 10:
                    done = samples - max(remaining[0], 0)
                    log.info("statistics: %d/%d tokens (%.0fs)", done, samples, now - t0)
                    last_log = now
        if pending and remaining[0] > 0:
            flush()
    for l in missing:
        if counts[l] < samples:
            raise DataError(f"statistics corpus {corpus!r} gave {counts[l]} tokens; {samples} were asked for", "use a larger corpus")
        mom2 = (sums[l] / counts[l]).float().contiguous()
        path = stats_path(model, l, corpus, samples, seed, site)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"mom2": mom2.cpu()}, str(tmp), metadata={"count": str(counts[l]), "corpus": corpus, "layer": str(l), "site": site})
        tmp.replace(path)
        out[l] = mom2.to(model.device)
    log.info("statistics for layers %s done in %.1fs", missing, time.perf_counter() - t0)
    return out


def second_moment(model: LoadedModel, layer: int, corpus: str = MODEL_CORPUS, samples: int = 32768, seed: int = 0, site: str = "mlp_out") -> torch.Tensor:
    """``C`` for one layer (see :func:`second_moments`)."""
    return second_moments(model, [layer], corpus, samples, seed, site=site)[layer]
