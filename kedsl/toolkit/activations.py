"""Reading and patching activations of named modules, with hooks that are always removed.

Every locate-then-edit method needs the same three things: the *input* of a module at
some token positions (ROME's key: the MLP output projection's input at the subject's last
token), the *output* of a module at some positions (its value), and a forward pass in
which a module's output is changed at some (row, token) cells (ROME's v* search adds a
vector there; causal tracing restores clean hidden states there). All three are context
managers or functions built on :func:`hooked`, which removes its hooks on exit whatever
happens.

Batches are plain token-id rows padded by :func:`make_batch`; positions are given per
row as absolute column indices in the padded batch (``Batch.col`` converts).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..model.handle import LoadedModel


@dataclass
class Batch:
    """Token rows padded to one width, ready for ``model(**batch.inputs())``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    offsets: list[int]  # per row: column of the row's first real token (left padding)
    lengths: list[int]

    def col(self, row: int, index: int) -> int:
        """Absolute column of token ``index`` (within the unpadded row) of ``row``."""
        if index < 0:
            index += self.lengths[row]
        return self.offsets[row] + index

    def inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


def pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0  # masked out anyway


def make_batch(rows: Sequence[Sequence[int]], pad: int, device: torch.device | str = "cpu", side: str = "left") -> Batch:
    """Pad ``rows`` on ``side`` with an attention mask and position ids counted over real
    tokens, so each row sees exactly what it would see alone (rotary or learned positions)."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("make_batch needs non-empty rows")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    offsets = []
    for i, r in enumerate(rows):
        start = width - len(r) if side == "left" else 0
        ids[i, start : start + len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, start : start + len(r)] = 1
        offsets.append(start)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids.to(device), mask.to(device), pos.to(device), offsets, [len(r) for r in rows])


@dataclass
class SplitBatch:
    """Rows cut in two at a per-row token: the *prefix* (the tokens before it) and the
    *suffix* (from it on), each part left-padded to its own width, so every row's suffix
    ends at the last column. In a causal model nothing that changes at or after the cut
    reaches the prefix, so an optimisation that perturbs only the suffix runs the prefix
    once (:func:`prefix_keys_values`) and each step only the suffix, attending to the
    cached keys and values: the same numbers as the whole rows, for a fraction of the
    tokens (a value search's rows are mostly context template and prompt before the
    subject's last token)."""

    prefix_ids: torch.Tensor  # (rows, P); P may be 0
    suffix_ids: torch.Tensor  # (rows, Q)
    attention_mask: torch.Tensor  # (rows, P + Q)
    position_ids: torch.Tensor  # (rows, P + Q), counted over real tokens
    suffix_offsets: list[int]  # per row: suffix column of its first suffix token (the cut)

    @property
    def prefix_width(self) -> int:
        return self.prefix_ids.shape[1]

    def prefix_inputs(self) -> dict[str, torch.Tensor]:
        p = self.prefix_width
        return {"input_ids": self.prefix_ids, "attention_mask": self.attention_mask[:, :p], "position_ids": self.position_ids[:, :p]}

    def suffix_inputs(self) -> dict[str, torch.Tensor]:
        """Inputs of the suffix pass (the attention mask covers prefix and suffix)."""
        return {"input_ids": self.suffix_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids[:, self.prefix_width :]}


def make_split_batch(rows: Sequence[Sequence[int]], cuts: Sequence[int], pad: int, device: torch.device | str = "cpu") -> SplitBatch:
    """:class:`SplitBatch` of ``rows``, each cut before its token ``cuts[i]`` (0 ≤ cut < len)."""
    if len(rows) != len(cuts) or not rows:
        raise ValueError("one cut per row, and at least one row")
    if any(not 0 <= c < len(r) for r, c in zip(rows, cuts)):
        raise ValueError("each cut must fall inside its row")
    p = max(cuts)
    q = max(len(r) - c for r, c in zip(rows, cuts))
    ids = torch.full((len(rows), p + q), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), p + q), dtype=torch.long)
    offsets = []
    for i, (r, c) in enumerate(zip(rows, cuts)):
        pre, suf = list(r[:c]), list(r[c:])
        if pre:
            ids[i, p - len(pre) : p] = torch.tensor(pre, dtype=torch.long)
            mask[i, p - len(pre) : p] = 1
        ids[i, p + q - len(suf) :] = torch.tensor(suf, dtype=torch.long)
        mask[i, p + q - len(suf) :] = 1
        offsets.append(q - len(suf))
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
    return SplitBatch(ids[:, :p], ids[:, p:], mask, pos, offsets)


def sliding_window(net: nn.Module) -> int | None:
    """The attention window of a model whose layers include sliding-window ones (Gemma 2/3,
    Mistral-style configs), else None."""
    config = getattr(net, "config", None)
    types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    return int(window) if window and "sliding_attention" in types else None


def splits_exactly(net: nn.Module, longest_row: int) -> bool:
    """Whether a :class:`SplitBatch` of rows up to ``longest_row`` tokens gives the same
    numbers as whole rows: its prefix and suffix are padded separately, and a sliding
    window counts the pad columns between them, so rows longer than the window must run
    whole."""
    window = sliding_window(net)
    return window is None or longest_row <= window


def cache_argument(net: nn.Module) -> str | None:
    """The keyword ``net.forward`` takes a key/value cache by (``cache`` in recent
    transformers, ``past_key_values`` before), or None if it takes none."""
    try:
        names = inspect.signature(net.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((n for n in ("cache", "past_key_values") if n in names), None)


def cache_keyword(net: nn.Module) -> str:
    """The keyword to hand ``net`` a key/value cache by: the one its forward takes (recent
    transformers warn on ``past_key_values`` and will drop it in 5.40), else the old one.
    Reading a signature costs ~35 µs: decoding loops look it up once, not per step."""
    return cache_argument(net) or "past_key_values"


def returned_cache(out: Any) -> Any:
    """The key/value cache a forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


@torch.no_grad()
def prefix_keys_values(net: nn.Module, batch: SplitBatch) -> Any:
    """Run the prefixes of ``batch`` once; the key/value cache they leave (None if no
    row has a prefix). The model's own cache object is kept as it is, so layers with a
    sliding attention window (Gemma) keep the part of the prefix their window sees."""
    if batch.prefix_width == 0:
        return None
    kw = cache_argument(net)
    if kw is None:
        raise ValueError(f"{type(net).__name__} takes no key/value cache")
    extra = {"logits_to_keep": 1} if accepts_logits_to_keep(net) else {}
    out = net(**batch.prefix_inputs(), use_cache=True, **extra)
    return returned_cache(out)


def run_suffix(net: nn.Module, batch: SplitBatch, prefix: Any, **kwargs: Any) -> Any:
    """The forward pass of the suffixes of ``batch`` on top of ``prefix``'s keys and
    values, in a copy of that cache (the pass appends to it; the prefix is not changed,
    so each call starts from the same prefix and holds no autograd graph of another)."""
    if prefix is None:  # no row has a prefix: the suffixes are the whole rows
        return net(**batch.suffix_inputs(), use_cache=False, **kwargs)
    return net(**batch.suffix_inputs(), use_cache=True, **{cache_keyword(net): copy.deepcopy(prefix)}, **kwargs)


def _detached(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (tuple, list)):
        return type(x)(_detached(v) for v in x)
    return x


@torch.no_grad()
def record_layer_outputs(net: nn.Module, layers: Sequence[nn.Module], run: Callable[[], Any]) -> list[Any]:
    """The outputs (whole, detached) of ``layers`` in the pass ``run()`` makes; the pass
    stops after the last of them."""
    outs: list[Any] = [None] * len(layers)
    with hooked() as hs:
        for i, mod in enumerate(layers):
            def post(m: nn.Module, args: tuple, out: Any, _i: int = i) -> None:
                outs[_i] = _detached(out)
                if _i == len(layers) - 1:
                    raise StopForward
            hs.append(mod.register_forward_hook(post))
        try:
            run()
        except StopForward:
            pass
    if any(o is None for o in outs):
        raise RuntimeError("a layer to record did not run")
    return outs


@contextlib.contextmanager
def replaying(layers: Sequence[nn.Module], outputs: Sequence[Any]) -> Iterator[None]:
    """Inside the block each of ``layers`` returns its recorded output instead of computing
    it (its hooks still run, so :func:`add_at` on the last one still adds there). For the
    layers below a value search's edit point: their outputs at the cut rows' suffix tokens
    cannot depend on ``δ``, so every step would recompute the same numbers. Layers that
    are skipped do not append to a key/value cache; nothing reads theirs in that pass."""
    if len(layers) != len(outputs):
        raise ValueError("one recorded output per layer")
    # a forward set on the instance (accelerate's offload hooks wrap it so) is put back
    saved = [(mod, mod.__dict__.get("forward")) for mod in layers]
    try:
        for mod, out in zip(layers, outputs):
            mod.forward = lambda *a, _o=out, **k: _o
        yield
    finally:
        for mod, own in saved:
            if own is None:
                mod.__dict__.pop("forward", None)
            else:
                mod.forward = own


@contextlib.contextmanager
def below_replayed(model: LoadedModel, layer: int, run: Callable[[], Any]) -> Iterator[None]:
    """Inside the block the transformer blocks below ``layer`` return the outputs they
    gave in the pass ``run()`` makes (run once, up to ``layer``): for training something
    at ``layer`` or above on the same inputs at every step (GRACE's values, WISE's side
    memory), where those blocks would recompute the same numbers each time."""
    below = [model.layer(i) for i in range(layer)]
    outputs = record_layer_outputs(model.model, below, run) if below else []
    with replaying(below, outputs):
        yield


def accepts_logits_to_keep(net: nn.Module) -> bool:
    """Whether ``net.forward`` takes ``logits_to_keep`` (then the head computes logits only
    for the last positions, which is all a target loss or a next-token score needs)."""
    try:
        return "logits_to_keep" in inspect.signature(net.forward).parameters
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def hooked(handles: list[torch.utils.hooks.RemovableHandle] | None = None) -> Iterator[list[Any]]:
    """Yield a list to append hook handles to; every handle is removed on exit."""
    hs: list[Any] = [] if handles is None else handles
    try:
        yield hs
    finally:
        for h in hs:
            h.remove()


def first_tensor(x: Any) -> torch.Tensor:
    """A module's output (or positional inputs) as one tensor: the first of a tuple."""
    return x[0] if isinstance(x, (tuple, list)) else x


def _replace_first(x: Any, new: torch.Tensor) -> Any:
    if isinstance(x, tuple):
        return (new,) + tuple(x[1:])
    if isinstance(x, list):
        return [new] + list(x[1:])
    return new


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (nothing later is needed)."""


def _raise_stop(*_: Any) -> None:
    raise StopForward


@dataclass
class Trace:
    """What :func:`trace` recorded: full input/output tensors of each traced module."""

    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


@contextlib.contextmanager
def trace(
    model: LoadedModel,
    paths: Sequence[str],
    inputs: bool = True,
    outputs: bool = False,
    detach: bool = True,
    stop_after: str | None = None,
) -> Iterator[Trace]:
    """Record the first positional input and/or the (first) output of modules ``paths``
    during the forward passes inside the ``with`` block (the last pass wins).

    ``stop_after``: raise :class:`StopForward` once that module has run, to skip the rest
    of the network; run the forward inside :func:`forward_until` or catch it yourself.
    """
    rec = Trace()
    with hooked() as hs:
        for path in paths:
            mod = model.module(path)

            def pre(m: nn.Module, args: tuple, kwargs: dict, _p: str = path) -> None:
                x = args[0] if args else next(iter(kwargs.values()))
                rec.inputs[_p] = x.detach() if detach else x

            def post(m: nn.Module, args: tuple, out: Any, _p: str = path) -> None:
                if outputs:
                    y = first_tensor(out)
                    rec.outputs[_p] = y.detach() if detach else y
                if stop_after == _p:
                    raise StopForward

            if inputs:
                hs.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            if outputs or stop_after == path:
                hs.append(mod.register_forward_hook(post))
        if stop_after is not None and stop_after not in paths:
            hs.append(model.module(stop_after).register_forward_hook(_raise_stop))
        yield rec


def forward_until(model: LoadedModel, batch: Batch, **kwargs: Any) -> Any:
    """``model(**batch.inputs())`` that treats :class:`StopForward` as a normal end."""
    try:
        return model.model(**batch.inputs(), use_cache=False, **kwargs)
    except StopForward:
        return None


@torch.no_grad()
def read_at(
    model: LoadedModel,
    path: str,
    rows: Sequence[Sequence[int]],
    positions: Sequence[int],
    what: str = "input",
) -> torch.Tensor:
    """The input (``what="input"``) or output of module ``path`` at token ``positions[i]``
    of ``rows[i]``, for all rows in one batch; returns ``(len(rows), dim)``.

    Stops the forward pass right after the module (nothing later is computed).
    """
    if len(rows) != len(positions):
        raise ValueError("one position per row")
    batch = make_batch(rows, pad_id(model.tokenizer), model.device)
    with trace(model, [path], inputs=what == "input", outputs=what == "output", stop_after=path) as rec:
        forward_until(model, batch)
    t = rec.inputs[path] if what == "input" else rec.outputs[path]
    r = torch.arange(len(rows), device=t.device)
    c = torch.tensor([batch.col(i, p) for i, p in enumerate(positions)], device=t.device)
    return t[r, c]


@contextlib.contextmanager
def edit_output(model: LoadedModel, path: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """During the block, module ``path``'s (first) output ``y`` is replaced by ``fn(y)``."""
    def post(m: nn.Module, args: tuple, out: Any) -> Any:
        return _replace_first(out, fn(first_tensor(out)))

    with hooked() as hs:
        hs.append(model.module(path).register_forward_hook(post))
        yield


def cell_index(rows: Sequence[int], cols: Sequence[int], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(list(rows), device=device), torch.as_tensor(list(cols), device=device)


@contextlib.contextmanager
def add_at(model: LoadedModel, path: str, rows: Sequence[int], cols: Sequence[int], vectors: torch.Tensor) -> Iterator[None]:
    """Add ``vectors[i]`` to module ``path``'s output at cell ``(rows[i], cols[i])``.

    ``vectors`` may require grad (the sum stays differentiable): this is how ROME's v*
    search perturbs the MLP output at the subject's last token.
    """
    r, c = cell_index(rows, cols, vectors.device)

    def fn(y: torch.Tensor) -> torch.Tensor:
        return y.index_put((r, c), y[r, c] + vectors.to(y.dtype))

    with edit_output(model, path, fn):
        yield


@contextlib.contextmanager
def add_rank_one(model: LoadedModel, path: str, row_vectors: torch.Tensor, direction: torch.Tensor) -> Iterator[None]:
    """Run module ``path`` as if its weight had ``+ row_vectors[b] ⊗ direction`` for batch
    row ``b``: the output at every token gains ``(x · direction) · row_vectors[b]`` where
    ``x`` is the module's input there. With the same vector in every row this is exactly
    the forward pass of the rank-one weight edit ``W + v dᵀ``; ``row_vectors`` may require
    grad (ROME's value search optimises the edit it will make)."""
    d = direction.float()

    def post(m: nn.Module, args: tuple, out: Any) -> Any:
        x = first_tensor(args)
        with torch.autocast(x.device.type, enabled=False):
            gate = x.float() @ d  # (rows, tokens)
        y = first_tensor(out)
        return _replace_first(out, y + (gate[..., None] * row_vectors[:, None, :]).to(y.dtype))

    with hooked() as hs:
        hs.append(model.module(path).register_forward_hook(post))
        yield


@contextlib.contextmanager
def replace_at(model: LoadedModel, path: str, rows: Sequence[int], cols: Sequence[int], values: torch.Tensor) -> Iterator[None]:
    """Set module ``path``'s output at cell ``(rows[i], cols[i])`` to ``values[i]``
    (causal tracing: restore clean hidden states at (token, layer) cells)."""
    r, c = cell_index(rows, cols, values.device)

    def fn(y: torch.Tensor) -> torch.Tensor:
        return y.index_put((r, c), values.to(y.dtype))

    with edit_output(model, path, fn):
        yield


@contextlib.contextmanager
def frozen(model: LoadedModel) -> Iterator[None]:
    """Parameters need no gradient inside the block (restored after): a backward pass
    then computes only the gradients of the vectors being optimised, about half the work."""
    params = list(model.model.parameters())
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, s in zip(params, saved):
            p.requires_grad_(s)


@contextlib.contextmanager
def attention_for_backward(device: torch.device) -> Iterator[None]:
    """On CPU, scaled-dot-product attention uses PyTorch's plain (math) kernel inside the
    block. Its forward is slower than the fused flash kernel but the flash kernel's CPU
    backward is far slower still: in a value-search step on SmolLM2 (10 facts, 3
    templates) it took 30% of the step, ~20x its own forward; with the math kernel the step
    was 25% faster. Elsewhere (CUDA) the default selection stays."""
    if device.type != "cpu":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield
