"""Second-moment statistics ``C = E[k kᵀ]`` of a layer's MLP-output-projection inputs.

ROME, MEMIT and AlphaEdit weight their updates by ``C``, computed over a text corpus.
Corpora (``corpus=``):

* ``"model"`` (default): text **sampled from the model itself** with a fixed seed
  (top-k 50, 128-token documents). There is no Wikipedia offline; the model's own text is
  a reasonable stand-in for "what the keys usually look like". The sampled texts are
  cached on disk too, so computing more layers later does not sample again.
* ``"questions"``: 1,000 Natural Questions with their answers, shipped with kedsl
  (``kedsl/toolkit/corpora/``, from a zsRE training file);
* a local ``.txt`` (one document per non-empty line) or ``.jsonl`` (a ``text`` field) file;
* any other string is taken as a ``datasets`` dataset name (``name`` or ``name:config``,
  split ``train``, a ``text`` field), loaded from the local datasets cache.

``samples`` counts **key vectors** (tokens), not documents. Results are stored as
safetensors (never pickle) under :func:`kedsl.cache.stats_dir`, keyed by the model's base
fingerprint, layer, corpus id and sample count. Several layers are computed in one pass
over the corpus, and the forward pass stops after the deepest layer asked for.

The tokens are always the first ``samples`` tokens of the corpus' rows in order (the
row that reaches the count is cut there: a key depends only on the tokens before it), so
the sum is over the same tokens however the rows are batched or shared out. Across
ranks (``ranks``, :mod:`kedsl.distributed`) rank 0 reads or samples the corpus and sends
it to every rank, each rank sums ``k kᵀ`` over its share of the rows, one all-reduce adds
the parts (and counts), and rank 0 alone writes the result under the same cache key.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import torch

from ..cache import stats_dir
from ..errors import DataError
from ..files import private_temp
from ..model.handle import LoadedModel
from .activations import StopForward, hooked, make_batch, pad_id
from .context import sample_token_rows

if TYPE_CHECKING:
    from ..distributed import Ranks

log = logging.getLogger(__name__)

MODEL_CORPUS = "model"
#: Corpora shipped with kedsl, by name (see ``kedsl/toolkit/corpora/README.md``).
SHIPPED_CORPORA = {"questions": Path(__file__).with_name("corpora") / "questions.txt"}
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
    if corpus in SHIPPED_CORPORA:
        return f"{corpus}-{hashlib.sha256(SHIPPED_CORPORA[corpus].read_bytes()).hexdigest()[:16]}"
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
    tmp = private_temp(path)
    tmp.write_text("".join(json.dumps({"ids": r}) + "\n" for r in rows))
    tmp.replace(path)
    return rows


def file_texts(path: Path) -> Iterator[str]:
    """The texts of a corpus file: each non-empty line of a .txt, each line's ``text`` of a .jsonl."""
    lines = (l for l in path.read_text().splitlines() if l.strip())
    if path.suffix == ".jsonl":
        return (json.loads(l)["text"] for l in lines)
    return lines


def _text_rows(model: LoadedModel, corpus: str, samples: int, max_len: int) -> Iterable[list[int]]:
    p = SHIPPED_CORPORA.get(corpus) or Path(corpus).expanduser()
    if p.exists():
        texts: Iterable[str] = file_texts(p)
    else:
        try:
            import datasets

            name, _, config = corpus.partition(":")
            ds = datasets.load_dataset(name, config or None, split="train")
        except Exception as e:  # noqa: BLE001 - any failure means the corpus is unusable
            raise DataError(
                f"statistics corpus {corpus!r} is neither a file nor a loadable dataset ({e})",
                'use corpus "model" (text sampled from the model), "questions" (shipped), a .txt/.jsonl file, or a cached datasets name',
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


def first_tokens(rows: Iterable[list[int]], samples: int, corpus: str) -> list[list[int]]:
    """The rows holding the first ``samples`` tokens, the last one cut to reach the count
    exactly (its keys are those of the whole row's first tokens: attention is causal)."""
    out: list[list[int]] = []
    total = 0
    for ids in rows:
        if total >= samples:
            break
        out.append(list(ids[: samples - total]))
        total += len(out[-1])
    if total < samples:
        raise DataError(f"statistics corpus {corpus!r} gave {total} tokens; {samples} were asked for", "use a larger corpus")
    return out


def _input_width(model: LoadedModel, layer: int, site: str) -> int:
    """The length of a site's vectors: the output projection's key length (from its
    weight's shape, which an offloaded, meta weight has too), or the hidden size."""
    if site == "mlp_out":
        w = model.parameter(model.mlp_out_weight_name(layer))
        return int(w.shape[0] if model.arch.transposed else w.shape[1])
    return model.hidden_size


@torch.no_grad()
def _sum_outer_products(model: LoadedModel, layers: Sequence[int], site: str, rows: Sequence[list[int]], batch_tokens: int, what: str) -> torch.Tensor:
    """``Σ k kᵀ`` over every token of ``rows``, ``k`` the site's vector in each of ``layers``
    (float64, stacked, on the model's device), in batches of about ``batch_tokens`` tokens;
    the forward pass stops after the deepest layer."""
    widths = {_input_width(model, l, site) for l in layers}
    if len(widths) != 1:
        raise RuntimeError(f"the layers {list(layers)} have {site} vectors of different widths {sorted(widths)}")
    width = widths.pop()
    sums = torch.zeros(len(layers), width, width, dtype=torch.float64, device=model.device)
    current_mask: list[torch.Tensor] = []

    def make_pre(j: int):
        def pre(m: torch.nn.Module, args: tuple) -> None:
            k = args[0][current_mask[0].bool()].float()
            sums[j] += (k.T @ k).to(device=sums.device, dtype=torch.float64)
        return pre

    def stop(*_: Any) -> None:
        raise StopForward

    pad = pad_id(model.tokenizer)
    total = sum(len(r) for r in rows)
    t0 = last_log = time.perf_counter()
    done = 0
    with hooked() as hs:
        for j, l in enumerate(layers):
            hs.append(model.module(site_path(model, l, site)).register_forward_pre_hook(make_pre(j)))
        hs.append(model.layer(max(layers)).register_forward_hook(stop))
        pending: list[list[int]] = []
        pending_tokens = 0
        for i, ids in enumerate(rows):
            pending.append(ids)
            pending_tokens += len(ids)
            if pending_tokens < batch_tokens and i < len(rows) - 1:
                continue
            batch = make_batch(pending, pad, model.device, side="right")
            current_mask[:] = [batch.attention_mask]
            try:
                with torch.autocast("cpu", enabled=False):
                    model.model(**batch.inputs(), use_cache=False)
            except StopForward:
                pass
            done += pending_tokens
            pending, pending_tokens = [], 0
            now = time.perf_counter()
            if now - last_log > 10:
                log.info("statistics%s: %d/%d tokens (%.0fs)", what, done, total, now - t0)
                last_log = now
    return sums


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
    ranks: "Ranks | None" = None,
) -> dict[int, torch.Tensor]:
    """``{layer: C}`` with ``C = E[k kᵀ]`` (float32, on the model's device) of the MLP output
    projection's inputs (``site="mlp_in"``: of the MLP's inputs) over ``samples`` tokens of
    ``corpus``. Cached on disk; layers not cached are computed together in one pass over
    the corpus. With ``ranks`` every rank calls this alike and gets the same result; the
    ranks share the corpus (module doc)."""
    from safetensors.torch import load_file, save_file

    for l in layers:
        model.check_layer(l)
    main = ranks is None or ranks.is_main
    out: dict[int, torch.Tensor] = {}
    missing = []
    for l in sorted(set(layers)):
        path = stats_path(model, l, corpus, samples, seed, site)
        if main and path.exists():
            out[l] = load_file(str(path))["mom2"].to(model.device)
            log.debug("statistics cache hit: %s", path.name)
        else:
            missing.append(l)
    if ranks is not None:  # rank 0's cache decides: it may be the only rank that has one
        cached = ranks.broadcast_object({l: t.cpu() for l, t in out.items()} if main else None)
        out = {l: t.to(model.device) for l, t in cached.items()}
        missing = [l for l in sorted(set(layers)) if l not in out]
    if not missing:
        return out

    rows: list[list[int]] | None = None
    if main:
        found = _model_corpus_rows(model, samples, seed) if corpus == MODEL_CORPUS else _text_rows(model, corpus, samples, max_len)
        rows = first_tokens(found, samples, corpus)
    if ranks is not None:
        rows = ranks.broadcast_object(rows)
    assert rows is not None
    share = ranks.share(rows) if ranks is not None else rows
    what = f" (rank {ranks.rank} of {ranks.world})" if ranks is not None else ""
    log.info("computing second moments for layers %s over %d tokens of corpus %r%s", missing, samples, corpus, what)
    t0 = time.perf_counter()
    sums = _sum_outer_products(model, missing, site, share, batch_tokens, what)
    count = sum(len(r) for r in share)
    if ranks is not None:  # one all-reduce: every layer's sum and the token count together
        flat = torch.cat([sums.reshape(-1), torch.tensor([float(count)], dtype=torch.float64, device=sums.device)])
        flat = ranks.all_reduce_sum(flat)
        sums, count = flat[:-1].reshape(sums.shape), int(flat[-1].item())
    if count != samples:
        raise RuntimeError(f"statistics summed {count} tokens where {samples} were asked for")
    for j, l in enumerate(missing):
        mom2 = (sums[j] / count).float().contiguous()
        if main:
            path = stats_path(model, l, corpus, samples, seed, site)
            tmp = private_temp(path)
            save_file({"mom2": mom2.cpu()}, str(tmp), metadata={"count": str(count), "corpus": corpus, "layer": str(l), "site": site})
            tmp.replace(path)
            log.info("statistics written to %s%s", path, what)
        out[l] = mom2.to(model.device)
    log.info("statistics for layers %s done in %.1fs%s", missing, time.perf_counter() - t0, what)
    return out


def prepare_second_moments(
    model: LoadedModel, layers: Sequence[int], corpus: str = MODEL_CORPUS, samples: int = 32768, seed: int = 0, site: str = "mlp_out"
) -> None:
    """Compute, in one pass over the corpus, the statistics of every layer in ``layers``
    that is not cached yet, and cache them, without holding them in memory.

    A method that edits several layers calls this before it writes any weight, then reads
    each layer's ``C`` with :func:`second_moment` (a cache hit) when it needs it. Asking
    layer by layer costs one pass over the corpus per layer (about a minute per layer on
    SmolLM2 with a 32k-token file corpus), and a layer first asked for after an earlier
    layer was written would be measured on the partly edited model, yet cached as the
    unedited model's."""
    missing = [l for l in sorted(set(layers)) if not stats_path(model, l, corpus, samples, seed, site).exists()]
    if missing:
        second_moments(model, missing, corpus, samples, seed, site=site)


def second_moment(model: LoadedModel, layer: int, corpus: str = MODEL_CORPUS, samples: int = 32768, seed: int = 0, site: str = "mlp_out") -> torch.Tensor:
    """``C`` for one layer (see :func:`second_moments`)."""
    return second_moments(model, [layer], corpus, samples, seed, site=site)[layer]
