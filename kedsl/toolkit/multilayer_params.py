"""The declared parameters every multi-layer method (MEMIT, AlphaEdit) shares, for the
plugins' descriptor modules; imports no torch (``kedsl check`` and ``kedsl plugins`` must
stay light). Their meaning is implemented in :mod:`kedsl.toolkit.multilayer`."""
from __future__ import annotations

from ..params import Param

LAYERS = Param("layers", "layers", [4, 5, 6, 7, 8], "layers whose MLP output projections share the update (a range like 4..8); the targets are set at the last", min=0)

#: After a method's own parameters: statistics, the target search and its batching.
SHARED = (
    Param("mom2_samples", "int", 8192, "tokens of the statistics corpus for C = E[k k^T]", min=1),
    Param("stats_corpus", "str", "model", "statistics corpus: 'model' (sampled from the model), a .txt/.jsonl file, or a datasets name"),
    Param("v_lr", "float", 0.5, "Adam learning rate of the target search", min=1e-5, max=10.0),
    Param("v_steps", "int", 25, "maximum optimisation steps of the target search", min=1, max=500),
    Param("v_weight_decay", "float", 0.5, "penalty on ||delta||^2 / ||h||^2 in the target search", min=0.0),
    Param("v_nll_tol", "float", 0.05, "a fact's target search stops once its target NLL is below this and the plain prompt says the target", min=0.0),
    Param("kl_factor", "float", 0.0625, "weight of the KL term keeping '{subject} is a' predictions", min=0.0),
    Param("clamp_norm_factor", "float", 0.75, "bound on ||delta|| relative to the residual stream's norm at the subject", min=0.0),
    Param("context_count", "int", 5, "generated context templates per length (0: plain prompt only)", min=0, max=50),
    Param("context_lengths", "list[int]", [5, 10], "token lengths of the generated context templates"),
    Param("seed", "int", None, "seed for context templates and the statistics corpus (default: the run's seed)", min=0),
    Param("v_batch", "int", 10, "facts per target-search batch (0: all at once); smaller bounds memory (the search's rows are facts x templates)", min=0),
    Param("spread_passes", "int", 1, "passes of the layer-by-layer update; a later pass spreads the gap to the targets the earlier left", min=1, max=10),
    Param("bf16", "bool", None, "bf16 autocast in the target search (default: on only where the CPU has native bf16, AMX or AVX512-BF16; off = exact fp32)"),
)
