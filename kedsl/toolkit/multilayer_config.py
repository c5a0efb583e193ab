"""The configuration every multi-layer method (MEMIT, AlphaEdit) shares: the edited
layers, the statistics, the target search and its batching. Torch-free, so the plugins'
descriptor modules can declare their parameters from it (``kedsl check`` and
``kedsl plugins`` must stay light); its meaning is implemented in
:mod:`kedsl.toolkit.multilayer`. A method's configuration subclasses it with its own
fields and its name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from ..errors import UsageError
from ..registry.params import MethodConfig, param

if TYPE_CHECKING:
    from ..editing.request import EditRequest
    from ..model.handle import LoadedModel


@dataclass
class MultiLayerConfig(MethodConfig):
    """Parameters shared by the multi-layer key-value methods."""

    method: ClassVar[str] = "method"

    layers: list[int] = param([4, 5, 6, 7, 8], "layers whose MLP output projections share the update (a range like 4..8); the targets are set at the last", type="layers", min=0)
    mom2_samples: int = param(8192, "tokens of the statistics corpus for C = E[k k^T]", min=1)
    stats_corpus: str = param("model", "statistics corpus: 'model' (sampled from the model), 'questions' (1,000 Natural Questions shipped with kedsl), a .txt/.jsonl file, or a datasets name")
    v_lr: float = param(0.5, "Adam learning rate of the target search", min=1e-5, max=10.0)
    v_steps: int = param(25, "maximum optimisation steps of the target search", min=1, max=500)
    v_weight_decay: float = param(0.5, "penalty on ||delta||^2 / ||h||^2 in the target search", min=0.0)
    v_nll_tol: float = param(0.05, "a fact's target search stops once its target NLL is below this and the plain prompt says the target", min=0.0)
    kl_factor: float = param(0.0625, "weight of the KL term keeping '{subject} is a' predictions", min=0.0)
    clamp_norm_factor: float = param(
        0.75,
        "bound on ||delta|| relative to the residual stream's norm at the subject "
        "(where the block norms the MLP output before the residual, as Gemma does: relative to that normed output)",
        min=0.0,
    )
    context_count: int = param(5, "generated context templates per length (0: plain prompt only)", min=0, max=50)
    context_lengths: list[int] = param([5, 10], "token lengths of the generated context templates")
    seed: int | None = param(None, "seed for context templates and the statistics corpus (default: the run's seed)", min=0)
    v_batch: int = param(10, "facts per target-search batch (0: all at once); smaller bounds memory (the search's rows are facts x templates)", min=0)
    joint_subjects: bool = param(False, "facts of one subject in a batch share one target shift, searched over all their prompts (their keys at the subject are nearly one, so separate shifts would be averaged)")
    spread_passes: int = param(1, "passes of the layer-by-layer update; a later pass spreads the gap to the targets the earlier left", min=1, max=10)
    bf16: bool | None = param(None, "bf16 autocast in the target search (default: on only where the CPU has native bf16, AMX or AVX512-BF16; off = exact fp32)")

    @classmethod
    def from_params(cls, params: dict[str, Any], default_seed: int = 0) -> Any:
        cfg = super().from_params(params, default_seed)
        cfg.layers = sorted(set(cfg.layers))
        if not cfg.layers:
            raise UsageError(f"{cls.method} needs at least one layer", "give layers=4..8, for example")
        return cfg

    def check(self, model: LoadedModel, requests: Sequence[EditRequest]) -> None:
        """The layers exist. (Every kind of request writes a target: an insert's new
        answer, an erasure's refusal; the executor refuses requests without one.)"""
        self.touched(model)

    def touched(self, model: LoadedModel) -> list[str]:
        """The weights an edit changes (for ``kedsl plan``): the layers' MLP output
        projections; a layer the model lacks is a usage error."""
        for layer in self.layers:
            model.check_layer(layer)
        return [model.mlp_out_weight_name(layer) for layer in self.layers]
