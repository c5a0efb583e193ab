"""ROME's parameters, declared once (torch-free: ``kedsl check`` validates scripts against
them), and its presets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kedsl.plugin import Depth, MethodConfig, Preset, param


@dataclass
class ROMEConfig(MethodConfig):
    """ROME's configuration; ``layer`` may be ``"auto"`` until the edit resolves it."""

    method: ClassVar[str] = "rome"

    layer: int | str = param(6, "layer whose MLP output projection is edited; auto: where causal tracing of the model finds the MLP effect at the subject's last token peaks (kedsl locate)", type="int|auto", min=0)
    v_lr: float = param(0.5, "Adam learning rate of the value search", min=1e-5, max=10.0)
    v_steps: int = param(25, "maximum optimisation steps of the value search", min=1, max=500)
    v_weight_decay: float = param(1e-3, "penalty on ||delta||^2 / ||v0||^2 in the value search", min=0.0)
    v_nll_tol: float = param(0.05, "stop the value search once the target NLL is below this", min=0.0)
    kl_factor: float = param(0.0625, "weight of the KL term keeping '{subject} is a' predictions", min=0.0)
    clamp_norm_factor: float = param(4.0, "bound on ||delta|| relative to the unedited MLP output", min=0.0)
    mom2_samples: int = param(8192, "tokens of the statistics corpus for C = E[k k^T]", min=1)
    mom2_update_weight: float = param(15000.0, "lambda in u = (lambda*C + I)^-1 k*: large -> C^-1 k* (the paper), 0 -> no covariance", min=0.0)
    stats_corpus: str = param("model", "statistics corpus: 'model' (sampled from the model), 'questions' (1,000 Natural Questions shipped with kedsl), a .txt/.jsonl file, or a datasets name")
    context_count: int = param(5, "generated context templates per length (0: plain prompt only)", min=0, max=50)
    context_lengths: list[int] = param([5, 10], "token lengths of the generated context templates")
    seed: int | None = param(None, "seed for context templates and the statistics corpus (default: the run's seed)", min=0)
    edit_aware_search: bool = param(True, "value search runs the layer as the rank-one edit will (delta * d^T k at every token); off = the paper's delta added at the subject's last token")
    bf16: bool | None = param(None, "bf16 autocast in the value search (default: on only where the CPU has native bf16, AMX or AVX512-BF16; off = exact fp32)")


# Chosen on SmolLM2-135M-Instruct (30 layers) by bench/rome_layer_sweep.py; see
# kedsl_rome.rome.LAYER_SWEEP for the table.
PRESETS = (
    Preset(
        model="smollm2-135m",
        values={"layer": 6, "v_lr": 5.0},
        measured_by=(
            "SmolLM2-135M-Instruct, ZsRE records 0-199 (bench/rome_layer_sweep.py): layer 4 0.982/0.832/0.960, "
            "layer 6 0.996/0.861/0.956, layer 8 1.000/0.864/0.952 (efficacy/generalization/locality); 6 and 8 tie, "
            "6 keeps more locality. v_lr 5.0: record 0 at lr 0.5 left the target NLL at 3.7 after 8 steps "
            "(the MLP output there has norm ~35), lr 5.0 reached 0.07. See kedsl_rome.rome.LAYER_SWEEP"
        ),
    ),
    Preset(
        model="gemma3-270m",
        values={"layer": 2, "clamp_norm_factor": 2.0},
        measured_by=(
            "Gemma 3 270M, ZsRE tuning records 0-14, single edits (bench/preset_sweep.py --model gemma3-270m "
            "--method rome --limit 15; bench/results/presets/gemma3-270m/rome), efficacy/generalization/locality: "
            "layer 1 0.827/0.711/0.889, layer 2 0.933/0.870/0.882, layer 3 1.000/0.872/0.730, layer 4 0.973/0.837/0.944; "
            "layer 2 with clamp_norm_factor 2 0.957/0.890/0.954, with mom2_update_weight 50000 0.983/0.881/0.849. "
            "Layer 4 also keeps locality on ZsRE but moves every 'located in the city of' subject (the Louvre too) "
            "to Rome; layer 2 with the tighter clamp keeps the Louvre in Paris"
        ),
    ),
    Preset(
        model="qwen2.5-coder-0.5b",
        values={"layer": 3, "clamp_norm_factor": 2.0},
        measured_by=(
            "Qwen2.5-Coder-0.5B-Instruct, ZsRE tuning records 0-14, single edits (bench/preset_sweep.py --model "
            "qwen2.5-coder-0.5b --method rome --limit 15; bench/results/presets/qwen2.5-coder-0.5b/rome), "
            "efficacy/generalization/locality: layer 2 1.000/1.000/0.893, layer 3 1.000/0.964/0.909, layer 5 "
            "1.000/0.907/0.873, layer 8 1.000/0.779/0.853; layer 3 with clamp_norm_factor 2 1.000/0.911/0.953, with "
            "mom2_update_weight 50000 1.000/0.991/0.873"
        ),
    ),
)

#: For models without a measured preset: the same fraction of depth as the measured
#: preset (ROME: layer 6 of 30 on SmolLM2).
DEPTH = (Depth("layer", 0.2),)
