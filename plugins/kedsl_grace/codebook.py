"""GRACE's codebook: keys, values and radii at one MLP output projection, and the hooks
that apply them.

Lookup rule. At the hooked module (``model.mlp_out(layer)``: LLaMA's ``down_proj``,
GPT-2's Conv1D ``c_proj``) every real (not padding) token position's *input* is a query.
Its nearest key (Euclidean, one ``torch.cdist`` over all entries) matches when the
distance is at most that key's radius. From a matching position on, the module's output
in that row is *replaced* by the matched entry's value, for as many positions as the
entry's ``span``: the number of target tokens of its edit. Those are exactly the
positions that predict the target's tokens when ``prompt + target`` is fed teacher-forced
(the last prompt token predicts the first target token, and so on), so multi-token
targets work, and exactly the positions the value was trained on; the position after the
target, and everything after it, is the model's own again, so a greedy continuation goes
on normally after the new answer instead of being pushed by the value forever (replacing
"every later position", the simpler rule, made greedy decoding repeat the target and
would ruin fluency). When a later position of the row matches again, the latest match
takes over (the most recent context is the most specific; with the default radius,
measured on SmolLM2 and ZsRE, non-final prompt positions and target positions lie far
outside every radius, so in practice a row has one match: its last prompt token). A
forward pass where nothing is replaced gets the module's own output tensor back
untouched: bit-identical pass-through.

Nearest-key lookup also settles conflicts: a query takes the value of the closest key
only, so two entries whose balls overlap split the overlap along the bisecting hyperplane
(a Voronoi split). GRACE's paper shrinks both radii to half the distance instead; that
also cuts the older entry's ball on every side away from the new key, losing
generalization for nothing, and would rewrite an installed attachment (whose digest is
recorded) after the fact. Here every entry keeps the radius it was made with. Ties
(re-editing the very same prompt gives the very same key) go to the newest entry.

KV-cached generation. A cached decoding step feeds only the new token; its query is a
generated token's, which does not match the prompt's key, so a rule applied per forward
would replace the prompt's last position only and not the target positions after it,
unlike the teacher-forced (uncached) forward of the same text: a multi-token target
would come out right when scored and wrong when generated. So the codebook remembers, per
row, the entry active at the end of the previous forward and how far into its span the
row is, and a forward that continues a KV cache (its ``past_key_values`` hold tokens)
with the same batch size carries on from there; a forward without a cache starts fresh.
Greedy decoding (``kedsl.scoring.greedy_ids``: fluency, efficacy_gen, what ``kedsl
generate`` shows) then produces what the teacher-forced forward predicts. The
teacher-forced metrics (efficacy, generalization, locality, portability) never use a
cache, so they do not depend on this.

Padding. Rows padded on the left (scoring) have padding positions before the prompt;
one of them matching would replace the row's first tokens. A forward pre-hook on the
top-level model reads ``attention_mask`` (and the cache) so padding positions are never
queries; a forward hook there forgets them when the forward ends.

Sharing. One codebook per hooked module (so per model and layer) holds the entries of
every installed :class:`GraceCodebook` attachment, in install order; its hooks exist
only while it holds entries, so after the last attachment is detached the model has no
GRACE hook left and computes exactly what it computed before.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kedsl.plugin import Attachment, ModelError

if TYPE_CHECKING:
    from kedsl.plugin import LoadedModel

log = logging.getLogger(__name__)

KIND = "grace_codebook"
METHOD = "grace"
FORMAT = 1  # version of the saved config/tensors layout


@dataclass
class _ForwardContext:
    """What the top-level forward was called with, as far as the lookup needs it."""

    shape: tuple[int, int]  # (batch, new tokens) of this forward
    mask: torch.Tensor | None  # (batch, past + new tokens), 1 for real tokens
    continues_cache: bool  # past_key_values already hold tokens


@dataclass
class _Carry:
    """Per row, where the previous forward left off: the entry whose span was running at
    its last position and the offset (from the match) of the next position."""

    version: int
    entry: torch.Tensor  # (batch,) long, row into the table
    next_offset: torch.Tensor  # (batch,) long
    running: torch.Tensor  # (batch,) bool: a span continues into the next forward


@dataclass
class _Table:
    """Every entry stacked, newest first (so ties in the nearest-key argmin go to it)."""

    keys: torch.Tensor  # (n, d_in) float32
    values: torch.Tensor  # (n, d_out) float32 (carries gradients while a value trains)
    radii: torch.Tensor  # (n,) float32
    spans: torch.Tensor  # (n,) long: positions replaced from a match on


def _past_length(past: Any) -> int:
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    try:  # legacy tuple-of-tuples cache: (key, value) per layer, (batch, heads, seq, dim)
        return int(past[0][0].shape[-2])
    except (IndexError, TypeError, AttributeError):
        return 0


class Codebook:
    """The GRACE entries at one module and the hooks that apply them (see module doc).

    Holds no reference to the module (the per-module registry is weak): the hooks are the
    only link, and they are removed when the last entry leaves.
    """

    def __init__(self) -> None:
        # owner id -> owner (a GraceCodebook: keys, values, radii, spans); dicts keep install order
        self._groups: dict[int, Any] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._table: _Table | None = None
        self._version = 0  # bumped on every change: a carry from an older table is dropped
        self._context: _ForwardContext | None = None
        self._carry: _Carry | None = None

    def __len__(self) -> int:
        return sum(len(g) for g in self._groups.values())

    @property
    def hooked(self) -> bool:
        return bool(self._handles)

    # -- entries -------------------------------------------------------------------------
    def add(self, owner: Any, module: nn.Module, top: nn.Module) -> None:
        """Add ``owner``'s entries (newest); install the hooks if they are the first.
        ``top`` is the whole model, whose forward's attention mask and cache are read."""
        if id(owner) in self._groups:
            raise RuntimeError("these GRACE entries are already in the codebook")
        self._groups[id(owner)] = owner
        self._changed()
        if not self._handles:
            self._handles = [
                top.register_forward_pre_hook(self._read_context, with_kwargs=True),
                # forgotten after the forward (even a failed one), so a module called on
                # its own later never sees a stale mask or cache flag
                top.register_forward_hook(self._forget_context, always_call=True),
                module.register_forward_hook(self._apply, with_kwargs=True),
            ]

    def remove(self, owner: Any) -> None:
        """Remove ``owner``'s entries; remove the hooks when none are left."""
        if self._groups.pop(id(owner), None) is None:
            raise RuntimeError("these GRACE entries are not in the codebook")
        self._changed()
        if not self._groups:
            for h in self._handles:
                h.remove()
            self._handles = []

    def _changed(self) -> None:
        self._table = None
        self._version += 1
        self._carry = None
        self._context = None

    def table(self, device: torch.device) -> _Table:
        """The stacked entries on ``device``, newest first. Cached until the entries change,
        except while a value is being trained (it changes every step)."""
        if self._table is not None and self._table.keys.device == device:
            return self._table
        groups = list(reversed(self._groups.values()))

        def stack(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.cat([getattr(g, name).flip(0) for g in groups]).to(device=device, dtype=dtype)

        table = _Table(stack("keys", torch.float32), stack("values", torch.float32), stack("radii", torch.float32), stack("spans", torch.long))
        values = table.values
        if not values.requires_grad:
            self._table = table
        return table

    # -- hooks ---------------------------------------------------------------------------
    def _read_context(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None or ids.dim() < 2:
            self._context = None
            return None
        cache = kwargs.get("past_key_values")
        if cache is None:
            cache = kwargs.get("cache")  # the name newer transformers versions use
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            mask = None  # a prepared 4-D mask: no per-token padding flags to read
        cache_position = kwargs.get("cache_position")
        past = _past_length(cache)
        if past == 0 and cache_position is not None and cache_position.numel():
            past = int(cache_position.reshape(-1)[0])
        self._context = _ForwardContext((int(ids.shape[0]), int(ids.shape[1])), mask, past > 0)
        return None

    def _forget_context(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._context = None

    def _apply(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        x = args[0] if args else next(iter(kwargs.values()))
        if not isinstance(output, torch.Tensor) or x.dim() != 3:
            raise RuntimeError(f"GRACE expects (batch, tokens, features) at its module, got input {tuple(x.shape)}")
        b, t, d_in = x.shape
        table = self.table(x.device)
        if table.keys.shape[1] != d_in:
            raise RuntimeError(f"GRACE keys have {table.keys.shape[1]} features, the module's input {d_in}")
        ctx = self._context
        if ctx is not None and ctx.shape != (b, t):
            ctx = None  # the module ran outside a top-level forward we saw: no mask, no carry

        # One batched distance computation for every position against every key.
        queries = x.detach().reshape(b * t, d_in).to(torch.float32)
        dist = torch.cdist(queries, table.keys)  # (b*t, n)
        nearest_dist, nearest = dist.min(dim=1)
        hit = (nearest_dist <= table.radii[nearest]).view(b, t)
        nearest = nearest.view(b, t)
        if ctx is not None and ctx.mask is not None and ctx.mask.shape[0] == b and ctx.mask.shape[1] >= t:
            hit &= ctx.mask[:, -t:].to(device=hit.device, dtype=torch.bool)

        # For each position, the latest matching position at or before it (-1: none), the
        # entry matched there and how far the position is from it.
        positions = torch.arange(t, device=hit.device).expand(b, t)
        latest = torch.where(hit, positions, torch.full_like(positions, -1)).cummax(dim=1).values
        matched = latest >= 0
        entry = nearest.gather(1, latest.clamp(min=0))
        offset = positions - latest
        carry = self._carry
        if ctx is not None and ctx.continues_cache and carry is not None and carry.version == self._version and carry.entry.shape[0] == b:
            # positions before this forward's first match continue the previous forward's span
            entry = torch.where(matched, entry, carry.entry.to(entry.device)[:, None])
            offset = torch.where(matched, offset, carry.next_offset.to(offset.device)[:, None] + positions)
            matched = matched | carry.running.to(matched.device)[:, None]
        active = matched & (offset < table.spans[entry])
        if ctx is not None:
            last_entry, last_offset = entry[:, -1], offset[:, -1] + 1
            running = matched[:, -1] & (last_offset < table.spans[last_entry])
            self._carry = _Carry(self._version, last_entry.clone(), last_offset.clone(), running.clone())
        else:
            self._carry = None

        if not bool(active.any()):
            return None  # nothing replaced: the module's own output, untouched
        replacement = table.values[entry].to(dtype=output.dtype, device=output.device)  # (b, t, d_out)
        return torch.where(active[..., None], replacement, output)


# One codebook per hooked module. Weak keys: a model that is dropped takes its codebooks along.
_CODEBOOKS: "weakref.WeakKeyDictionary[nn.Module, Codebook]" = weakref.WeakKeyDictionary()


def codebook_of(module: nn.Module) -> Codebook | None:
    """The codebook at ``module``, if GRACE entries were ever installed there."""
    return _CODEBOOKS.get(module)


def module_features(model: "LoadedModel", layer: int) -> tuple[int, int]:
    """(input features, output features) of ``layer``'s MLP output projection (Linear or
    GPT-2's Conv1D, whose weight is stored (in, out))."""
    w = model.parameter(model.mlp_out_weight_name(layer))
    d0, d1 = int(w.shape[0]), int(w.shape[1])
    return (d0, d1) if model.arch.transposed else (d1, d0)


class GraceCodebook(Attachment):
    """One GRACE edit's entries (one per request of the edit): keys (inputs of the MLP
    output projection at the last prompt token), values (its replacement outputs), radii
    (absolute; made as ``eps`` x the key's norm) and spans (the target's token count:
    how many positions a match replaces). Attaching adds them to the model's shared
    codebook at ``layer``; detaching removes exactly them."""

    kind = KIND
    method = METHOD

    def __init__(
        self,
        layer: int,
        keys: torch.Tensor,
        values: torch.Tensor,
        radii: torch.Tensor,
        spans: torch.Tensor,
        eps: float | None = None,
    ):
        n = keys.shape[0] if keys.dim() == 2 else -1
        if values.dim() != 2 or values.shape[0] != n or radii.shape != (n,) or spans.shape != (n,) or n < 1:
            raise ModelError(
                f"malformed GRACE codebook: keys {tuple(keys.shape)}, values {tuple(values.shape)}, "
                f"radii {tuple(radii.shape)}, spans {tuple(spans.shape)}",
                "the attachment's files were not written by kedsl's GRACE; re-apply the edit",
            )
        if bool((spans < 1).any()) or bool((radii < 0).any()):
            raise ModelError("malformed GRACE codebook: spans must be >= 1 and radii >= 0", "re-apply the edit")
        self.layer = int(layer)
        self.keys = keys
        self.values = values
        self.radii = radii
        self.spans = spans.to(torch.long)
        self.eps = eps

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def attach(self, model: "LoadedModel") -> None:
        model.check_layer(self.layer)
        d_in, d_out = module_features(model, self.layer)
        if self.keys.shape[1] != d_in or self.values.shape[1] != d_out:
            raise ModelError(
                f"this GRACE codebook was made for a layer with {self.keys.shape[1]} -> {self.values.shape[1]} features; "
                f"layer {self.layer} of this model has {d_in} -> {d_out}",
                "install it only on the model (architecture) it was made with",
            )
        module = model.mlp_out(self.layer)
        book = _CODEBOOKS.get(module)
        if book is None:
            book = _CODEBOOKS[module] = Codebook()
        book.add(self, module, model.model)

    def detach(self, model: "LoadedModel") -> None:
        book = _CODEBOOKS.get(model.mlp_out(self.layer))
        if book is None:
            raise RuntimeError("this GRACE codebook is not attached to this model")
        book.remove(self)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {
            "keys": self.keys.detach().to("cpu", torch.float32),
            "values": self.values.detach().to("cpu", torch.float32),
            "radii": self.radii.detach().to("cpu", torch.float32),
            "spans": self.spans.detach().to("cpu", torch.long),
        }
        config: dict[str, Any] = {"format": FORMAT, "layer": self.layer, "entries": len(self), "radius": "eps * |key|"}
        if self.eps is not None:
            config["eps"] = self.eps
        return tensors, config

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> "GraceCodebook":
        if config.get("format") != FORMAT or not {"keys", "values", "radii", "spans"} <= set(tensors):
            raise ModelError(
                f"unsupported GRACE codebook (format {config.get('format')!r}, tensors {sorted(tensors)})",
                "it was written by another kedsl version; re-apply the edit with this one",
            )
        return cls(config["layer"], tensors["keys"], tensors["values"], tensors["radii"], tensors["spans"], config.get("eps"))

    def merged_deltas(self, model: "LoadedModel") -> dict[str, torch.Tensor] | None:
        return None  # a lookup table, not a linear map: it cannot be folded into weights
