"""UltraEdit (Gu et al. 2025), built on :mod:`kedsl.toolkit.gradients`.

One turn (one ``apply``: a single edit, or a ``batch`` block) for each edited projection
``y = W x``:

1. ``X`` (tokens x d_in) and ``D = dL/dy`` (tokens x d_out) at the positions that predict
   an answer token, from one forward and backward pass of the answers' NLL over all the
   turn's requests (:func:`~kedsl.toolkit.gradients.linear_factors`);
2. ``z = [x; d]`` is folded into the projection's running mean and variance, which carry
   over every earlier turn (the lifelong normalisation), and normalised with them:
   ``x^, d^``;
3. each token asks for the output change ``v = -lr * |x^|^2 * d^``: what a gradient step
   ``-lr * d^ x^T`` on the normalised factors would change the output by;
4. ``dW^T = (X^T X + ridge * I)^-1 X^T V``: the smallest change (in the ridge's sense)
   that makes the raw inputs ``X`` produce ``V``. One ``d_in x d_in`` solve per
   projection, independent of the number of edits made before.

The running statistics (``<weight>.mean``, ``.m2``, ``.count``: ``d_in + d_out`` floats
twice, plus one count, per projection) are the method state, so memory does not grow with
the number of edits. With ``retain`` > 0 the state also holds ``<weight>.keys``, the sum of
``X^T X`` over all earlier turns (``d_in x d_in``), and the solve adds ``retain`` times it:
a later turn then moves the outputs at earlier edits' answer positions as little as it can
(MEMIT's and AlphaEdit's treatment of earlier keys, here at UltraEdit's fixed cost).
As a sum, that term outweighs a new turn more with every turn, and a new edit's change is
pushed into directions no earlier key uses; ``retain_scale="turn"`` weighs it as one turn
of the new turn's size instead.
With ``positions="subject"`` a turn also takes the subject's last token, where ROME keys
its edit, besides the answer positions the paper takes; with ``"subject_key"`` the subject's
last token replaces the prompt's last position, so the first answer token is asked of the
subject alone (the later answer tokens stay where they are predicted).
With ``context_count`` > 0 every edit is also trained behind short texts the model
generates (ROME's context templates), so it holds in more contexts than its own prompt.

Where the paper shares one normaliser among projections of equal shape, kedsl keeps one
per projection (the gate and up projections of a layer see the same inputs but different
gradients). And where the paper standardises with the running statistics as they are,
kedsl shrinks them towards a prior worth a few dozen tokens (:func:`requested_changes`):
statistics from the handful of tokens of a model's first edits are not yet an estimate
(the deviation of the very first token from the mean is zero), and standardising with
them made the second of two single edits undo the first on small models.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch

from kedsl.plugin import EditContext, EditOutcome, EditRequest, LoadedModel, Method
from kedsl.toolkit.context import context_templates
from kedsl.toolkit.gradients import AnswerBatch, encode_answers, fold_moments, linear_factors, standardise
from kedsl.toolkit.linear_algebra import solve_product
from kedsl.toolkit.stats import prepare_second_moments, second_moment

from .config import UltraEditConfig

log = logging.getLogger(__name__)

#: Requests per forward/backward pass: bounds the activations kept for the backward pass
#: (a turn of 100 ZsRE edits on SmolLM2 is ~2,000 tokens).
CHUNK = 32

#: The weight, in tokens, of the prior the running statistics are shrunk towards.
PRIOR_TOKENS = 64


def requested_changes(x: torch.Tensor, d: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor, count: torch.Tensor, lr: float) -> torch.Tensor:
    """``V = -lr * |x^|^2 * d^`` (tokens x d_out, float64) from the raw factors and the
    running statistics (already holding these tokens).

    The statistics are shrunk towards a prior worth :data:`PRIOR_TOKENS` tokens: mean 0
    and, per feature block (inputs, gradients), the block's mean square over this turn's
    tokens. A model's first edits thus get a step scaled like the later ones (each block at
    unit root mean square) instead of a standardisation estimated from a handful of tokens,
    whose per-feature variances can be near zero; after a few thousand tokens the running
    statistics dominate, as in the paper."""
    z = torch.cat([x, d], dim=1).double()
    d_in = x.shape[1]
    n = float(count)
    k = float(PRIOR_TOKENS)
    var = m2.double() / max(n, 1.0)
    prior = torch.empty_like(var)
    prior[:d_in] = z[:, :d_in].pow(2).mean()
    prior[d_in:] = z[:, d_in:].pow(2).mean()
    shrunk_mean = mean.double() * (n / (n + k))
    shrunk_var = (n * var + k * prior) / (n + k)
    zn = standardise(z, shrunk_mean, shrunk_var)
    xn, dn = zn[:, :d_in], zn[:, d_in:]
    return -lr * xn.pow(2).sum(1, keepdim=True) * dn


def ridge_update(x: torch.Tensor, v: torch.Tensor, ridge: float, preserved: torch.Tensor | None = None) -> torch.Tensor:
    """``dW`` (d_out x d_in, float64) solving ``(X^T X + ridge I + P) dW^T = X^T V``, with
    ``P`` (``preserve * C``) the penalty on changing the outputs of preserved inputs."""
    x = x.double()
    a = x.T @ x + ridge * torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    if preserved is not None:
        a = a + preserved.to(device=x.device, dtype=torch.float64)
    return solve_product(a, x.T, v.double()).T


def preserved_inputs(model: LoadedModel, layer: int, site: str, cfg: UltraEditConfig) -> torch.Tensor | None:
    """``preserve * C`` for a projection at ``layer`` whose inputs are those of ``site``
    (None with ``preserve`` 0), ``C`` their second moment over the statistics corpus
    (cached on disk)."""
    if cfg.preserve <= 0:
        return None
    return cfg.preserve * second_moment(model, layer, cfg.stats_corpus, cfg.mom2_samples, cfg.seed, site=site)


def _gram(x: torch.Tensor) -> torch.Tensor:
    """``X^T X`` in float64 (the retained keys' running sum)."""
    x = x.double()
    return x.T @ x


def _retain_factor(state: dict[str, Any], name: str, tokens: int, scale: str) -> float:
    """What the earlier turns' ``K^T K`` is multiplied by before ``retain``: 1 with
    ``scale="sum"``; with ``"turn"``, this turn's token count over the earlier turns' (the
    count of the running statistics before this turn folds in), so that ``retain`` weighs
    the earlier keys' mean second moment as if it were one turn of this size."""
    if scale == "sum":
        return 1.0
    earlier_tokens = float(state[f"{name}.count"])
    if earlier_tokens <= 0:
        raise RuntimeError(f"ultraedit: {name} has retained keys but no tokens behind its running statistics")
    return tokens / earlier_tokens


class UltraEdit(Method):
    """The method class named by kedsl_ultraedit's MethodSpec."""

    def touches(self, model: LoadedModel, params: dict[str, Any]) -> list[str]:
        return UltraEditConfig.from_params(params).weight_names(model)

    def apply(self, model: LoadedModel, requests: list[EditRequest], params: dict[str, Any], context: EditContext) -> EditOutcome:
        cfg = UltraEditConfig.from_params(params, context.seed)
        edited = cfg.edited(model)
        names = [name for name, _, _ in edited]
        modules = {name: model.module(name.rsplit(".", 1)[0]) for name in names}
        if cfg.preserve > 0:  # one pass over the statistics corpus per site, not per layer
            for site in sorted({site for _, _, site in edited}):
                prepare_second_moments(model, [l for _, l, s in edited if s == site], cfg.stats_corpus, cfg.mom2_samples, cfg.seed, site)
        preserved = {name: preserved_inputs(model, layer, site, cfg) for name, layer, site in edited}
        templates = context_templates(model, cfg.context_lengths, cfg.context_count, cfg.seed or 0) if cfg.context_count else ["{}"]
        start = time.perf_counter()
        # tokenized once: every step reads the same answers
        pairs = [(t.format(r.prompt), r.target) for r in requests for t in templates]
        subjects = [r.subject for r in requests for _ in templates] if cfg.positions != "answer" else None
        batches = [encode_answers(model, pairs[at : at + CHUNK], None if subjects is None else subjects[at : at + CHUNK]) for at in range(0, len(pairs), CHUNK)]
        new_state: dict[str, torch.Tensor] = {}
        held: dict[str, torch.Tensor | None] = {}  # per projection: preserve * C + retain * (earlier turns' K^T K)
        tokens = 0
        for step in range(cfg.steps):
            if context.progress is not None and cfg.steps > 1:
                context.progress(f"ultraedit step {step + 1}/{cfg.steps} over {len(requests)} request(s)")
            factors = self._factors(model, batches, modules, cfg.positions == "subject_key")
            for name in names:
                x, d = factors[name]
                tokens = x.shape[0]
                if step == 0:
                    # fold into copies: the executor's rollback restores the entries it snapshotted
                    mean, m2, count = self._statistics(context.state, name, x.shape[1] + d.shape[1])
                    fold_moments(mean, m2, count, torch.cat([x, d], dim=1))
                    new_state.update({f"{name}.mean": mean, f"{name}.m2": m2, f"{name}.count": count})
                    if cfg.retain > 0:
                        earlier = context.state.get(f"{name}.keys")
                        held[name] = None if earlier is None else cfg.retain * earlier * _retain_factor(context.state, name, tokens, cfg.retain_scale)
                        if preserved[name] is not None:
                            held[name] = preserved[name] if held[name] is None else held[name] + preserved[name]
                        # a new tensor: the executor's rollback restores the one it snapshotted
                        new_state[f"{name}.keys"] = _gram(x) if earlier is None else earlier + _gram(x)
                    else:
                        held[name] = preserved[name]
                stats = (new_state[f"{name}.mean"], new_state[f"{name}.m2"], new_state[f"{name}.count"])
                delta = ridge_update(x, requested_changes(x, d, *stats, cfg.lr), cfg.ridge, held[name])
                weight = model.read_weight(name)  # where it lives (an offloaded one from its map)
                delta = delta.T if model.arch.transposed else delta
                # summed in float32, rounded once to the weight's dtype (a bf16 weight keeps steps below its own rounding)
                context.weights.set_(name, weight.float() + delta.to(device=weight.device, dtype=torch.float32))
        context.state.update(new_state)
        seconds = time.perf_counter() - start
        log.info("ultraedit: %d request(s) x %d context(s), %d answer tokens, %d projections, %d step(s), %.2fs", len(requests), len(templates), tokens, len(names), cfg.steps, seconds)
        return context.outcome(projections=len(names), contexts=len(templates), answer_tokens=tokens, steps=cfg.steps, seconds=seconds)

    @staticmethod
    def _factors(model: LoadedModel, batches: list[AnswerBatch], modules: dict[str, Any], subject_keyed: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every projection's ``(X, D)`` at the answer-predicting positions of all batches
        (and the subjects' last tokens where located; with ``subject_keyed``, those in place
        of the prompts' last positions)."""
        parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in modules}
        was_training = model.model.training
        model.model.eval()  # no dropout: the edit must be deterministic
        try:
            for batch in batches:
                # the loss is a mean over the chunk's answer tokens: times their count, each
                # row of D is that token's own gradient, whatever the chunking
                per_token = float(batch.predicting().sum())
                # the answer positions, and the subjects' last tokens where the batch located them
                keep = batch.subject_keyed() if subject_keyed else batch.predicting_and_subject()
                for name, (x, d) in linear_factors(model, batch, modules, keep=keep).items():
                    parts[name].append((x, d * per_token))
        finally:
            model.model.train(was_training)
        return {n: (torch.cat([x for x, _ in p]), torch.cat([d for _, d in p])) for n, p in parts.items()}

    @staticmethod
    def _statistics(state: dict[str, Any], name: str, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Copies of ``name``'s running statistics (float64), zero before its first turn."""
        if f"{name}.count" in state:
            return state[f"{name}.mean"].clone(), state[f"{name}.m2"].clone(), state[f"{name}.count"].clone()
        return torch.zeros(width, dtype=torch.float64), torch.zeros(width, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
