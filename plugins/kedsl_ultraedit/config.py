"""UltraEdit's parameters, declared once (torch-free: ``kedsl check`` validates scripts
against them), and its presets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from kedsl.plugin import Depth, MethodConfig, Preset, UsageError, param

if TYPE_CHECKING:
    from kedsl.plugin import LoadedModel

PROJECTIONS = ("input", "output", "both", "gate_up")
POSITIONS = ("answer", "subject", "subject_key")
RETAIN_SCALES = ("sum", "turn")


@dataclass
class UltraEditConfig(MethodConfig):
    """UltraEdit's configuration: which projections it edits, its step and its ridge."""

    method: ClassVar[str] = "ultraedit"

    layers: list[int] = param([10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], "layers whose MLP projections are edited (a range like 10..22)", type="layers", min=0)
    projections: str = param("input", "which MLP projections of those layers: 'input' (the ones reading the hidden state: gate and up), 'output' (down), 'both', or 'gate_up' (the paper's pattern on gated MLPs: gate projections of gate_layers and up projections of up_layers; layers is then not read)", type="str", choices=PROJECTIONS)
    gate_layers: list[int] | None = param(None, "with projections='gate_up': layers whose gate projection is edited (UltraEdit's Llama-3-8B setting: 11..15 of 32)", type="layers", min=0)
    up_layers: list[int] | None = param(None, "with projections='gate_up': layers whose up projection is edited (UltraEdit's Llama-3-8B setting: 18..24 of 32)", type="layers", min=0)
    lr: float = param(1e-5, "step size: each answer token asks its projection for the output change -lr * |x^|^2 * d^ (x^, d^: the normalised input and output gradient)", min=0.0)
    ridge: float = param(1.0, "lambda in (X^T X + lambda I) dW^T = X^T V: how strongly the change is held small", min=0.0)
    preserve: float = param(0.0, "weight of the inputs' second moment C over general text in (X^T X + ridge I + preserve C) dW^T = X^T V: holds the outputs of unrelated text in place (0: the paper's identity ridge only; like MEMIT's lambda, in tokens)", min=0.0)
    mom2_samples: int = param(8192, "tokens of the statistics corpus for C (with preserve > 0)", min=1)
    stats_corpus: str = param("model", "statistics corpus for C: 'model' (sampled from the model), 'questions' (1,000 Natural Questions shipped with kedsl), a .txt/.jsonl file, or a datasets name")
    positions: str = param("answer", "token positions whose inputs and gradients a turn takes: 'answer' (those predicting an answer token, the paper's), 'subject' (those and the subject's last token, where ROME keys its edit: a paraphrase that keeps the subject finds the change there), or 'subject_key' (as 'subject' but without the prompt's last position: the first answer token is asked of the subject alone)", type="str", choices=POSITIONS)
    retain: float = param(0.0, "weight of the earlier turns' own inputs K in (X^T X + ridge I + preserve C + retain K^T K) dW^T = X^T V: holds the outputs at earlier edits' answer positions in place (0: the paper; 1: as much as this turn's fit). K^T K is a running d_in x d_in sum, so memory does not grow with the edits", min=0.0)
    retain_scale: str = param("sum", "how the earlier turns' K^T K is weighed in the solve: 'sum' (as it is: every earlier token counts like one of this turn's, so the earlier turns outweigh a new one more with every turn) or 'turn' (scaled to this turn's token count: retain times the earlier keys' mean second moment, the same weight after 2 turns as after 100)", type="str", choices=RETAIN_SCALES)
    context_count: int = param(0, "generated prefixes per length each edit is also trained behind, as ROME's context templates (0: the plain prompt only, the paper)", min=0, max=20)
    context_lengths: list[int] = param([5], "token lengths of the generated prefixes (with context_count > 0)")
    steps: int = param(1, "closed-form steps per turn, each from the gradients at the weights the previous step left (1: the paper's single step; the statistics take the first step's factors only)", min=1, max=20)
    seed: int | None = param(None, "seed of the statistics corpus (default: the run's seed)", min=0)

    @classmethod
    def from_params(cls, params: dict[str, Any], default_seed: int = 0) -> Any:
        cfg = super().from_params(params, default_seed)
        cfg.layers = sorted(set(cfg.layers))
        cfg.gate_layers = sorted(set(cfg.gate_layers or []))
        cfg.up_layers = sorted(set(cfg.up_layers or []))
        if cfg.projections == "gate_up":
            if not cfg.gate_layers and not cfg.up_layers:
                raise UsageError("ultraedit with projections='gate_up' needs gate_layers or up_layers", "give gate_layers=10..14, up_layers=17..23, for example")
        elif cfg.gate_layers or cfg.up_layers:
            raise UsageError("ultraedit reads gate_layers and up_layers only with projections='gate_up'", "add projections=\"gate_up\", or give the layers with layers=...")
        elif not cfg.layers:
            raise UsageError("ultraedit needs at least one layer", "give layers=10..22, for example")
        return cfg

    def edited(self, model: LoadedModel) -> list[tuple[str, int, str]]:
        """``(weight name, layer, statistics site)`` of every projection an edit changes
        (the site names where the inputs' second moment is taken: ``mlp_in`` or
        ``mlp_out``); a layer the model lacks is a usage error."""
        out: list[tuple[str, int, str]] = []
        if self.projections == "gate_up":
            for layer in sorted(set(self.gate_layers) | set(self.up_layers)):
                model.check_layer(layer)
                gate, up = _gate_and_up(model, layer)
                out += [(gate, layer, "mlp_in")] if layer in self.gate_layers else []
                out += [(up, layer, "mlp_in")] if layer in self.up_layers else []
            return out
        for layer in self.layers:
            model.check_layer(layer)
            if self.projections in ("input", "both"):
                out += [(name, layer, "mlp_in") for name in model.mlp_in_weight_names(layer)]
            if self.projections in ("output", "both"):
                out.append((model.mlp_out_weight_name(layer), layer, "mlp_out"))
        return out

    def weight_names(self, model: LoadedModel) -> list[str]:
        """The weights an edit changes."""
        return [name for name, _, _ in self.edited(model)]


def _gate_and_up(model: LoadedModel, layer: int) -> tuple[str, str]:
    """The gate and the up projection of ``layer``'s gated MLP, told apart by their module
    names (LLaMA, Gemma and Qwen name them ``gate_proj`` and ``up_proj``); a model without
    two such projections is a usage error."""
    found: dict[str, list[str]] = {"gate": [], "up": []}
    for name in model.mlp_in_weight_names(layer):
        leaf = name.rsplit(".", 2)[-2]
        for kind in found:
            if leaf.startswith(kind):
                found[kind].append(name)
    if len(found["gate"]) != 1 or len(found["up"]) != 1:
        raise UsageError(
            f"ultraedit: projections='gate_up' needs a gated MLP with one gate and one up projection; layer {layer} has {model.mlp_in_weight_names(layer)}",
            "use projections='input' (every projection reading the hidden state) with layers=...",
        )
    return found["gate"][0], found["up"][0]


#: The step measured on SmolLM2, carried to Gemma and Qwen on their depth-relative layers
#: (measured there on single edits only: no retain).
SINGLE_EDIT_STEP = {"projections": "input", "lr": 3e-5, "steps": 5, "preserve": 500.0, "stats_corpus": "questions", "positions": "subject"}

PRESETS: tuple[Preset, ...] = (
    Preset(
        model="smollm2-135m",
        values={"layers": list(range(10, 23)), "projections": "input", "lr": 5e-5, "steps": 5, "preserve": 500.0, "stats_corpus": "questions", "positions": "subject", "retain": 3.0},
        measured_by=(
            "ZsRE tuning records 0-299 in sequential turns of 100 (kedsl bench --mode sequential --batch-size 100 "
            "--limit 300, bench/results/ultraedit/tune/); efficacy/generalization/locality after 298 edits: this "
            "setting 95.1/63.0/84.4; with positions subject_key 70.3/61.1/84.7 (at lr 1e-4 76.7/65.8/72.9); with retain 1 92.9/64.2/83.9; at lr 3e-5 with retain 1 and subject positions "
            "91.4/60.7/88.1, with retain 1 only 89.1/59.1/87.9, the same in turns of 10 91.1/54.5/92.2, with one "
            "context prefix (no retain) 87.9/60.7/85.5 at twice the time; lr 3e-5 without either (the preset before) "
            "85.9/57.7/86.6, with preserve 2000 81.2/55.0/91.4. With statistics of text sampled from the "
            "model (the corpus before): preserve 2000 76.1/54.9/82.9; without preserve 90.3/60.8/71.6; steps 3: 83.0/59.3/75.5, with preserve 500 "
            "69.0/56.6/83.2, with ridge 100 40.8/37.0/84.9, with ridge 0.01 78.8/57.8/52.1, output projections "
            "71.2/50.3/81.2; lr 5e-5 steps 3 preserve 2000 66.2/55.2/82.8. Held-out 1,000 edits (ZsRE 500-1499): "
            "90.9/55.4/83.4; no setting tried reaches 0.7 generalization. Later (bench/results/ultraedit/layers/, "
            "retain_scale/): one turn of 100 on tuning 0-99 with layers 10..22 94.4/72.2/91.3, 2..10 62.5/57.9/88.5, "
            "4..16 78.2/65.1/91.9, 2..22 88.8/75.2/84.7, 14..26 96.8/73.0/88.6; tuning 0-499 in turns of 100 "
            "(498 edits): this setting 94.1/59.2/83.8, with retain_scale turn 91.9/61.3/82.4"
        ),
    ),
    Preset(
        model="gemma3-270m",
        values={"layers": list(range(6, 15)), **SINGLE_EDIT_STEP},
        measured_by=(
            "ZsRE tuning records 0-9, single edits (bench/preset_sweep.py --model gemma3-270m --method ultraedit "
            "--param lr --values 3e-5,5e-5 --limit 10 --set steps=5 --set preserve=500 --set stats_corpus=questions "
            "--set positions=subject; bench/results/presets/gemma3-270m/ultraedit/): SmolLM2's step on the "
            "depth-relative layers 6..14, efficacy/generalization/locality 100/100/100 at lr 3e-5 and at 5e-5; "
            "the paper's defaults (lr 1e-5, one step) gave 47.8/47.4/93.9 on held-out 500-549. Not measured in "
            "sequential turns, so retain is left at 0"
        ),
    ),
    Preset(
        model="qwen2.5-coder-0.5b",
        values={"layers": list(range(8, 19)), **SINGLE_EDIT_STEP},
        measured_by=(
            "ZsRE tuning records 0-9, single edits (bench/preset_sweep.py --model qwen2.5-coder-0.5b --method "
            "ultraedit --param lr --values 3e-5 --limit 10 --set steps=5 --set preserve=500 --set "
            "stats_corpus=questions --set positions=subject; bench/results/presets/qwen2.5-coder-0.5b/ultraedit/): "
            "SmolLM2's step on the depth-relative layers 8..18, efficacy/generalization/locality 100/100/93; the "
            "paper's defaults (lr 1e-5, one step) gave 40.5/37.2/97.1 on held-out 500-549. Not measured in "
            "sequential turns, so retain is left at 0"
        ),
    ),
)

#: For models without a measured preset: the middle of the model (UltraEdit's Llama-3-8B
#: setting edits layers 11..24 of 32).
DEPTH = (Depth("layers", 0.34, 0.75),)
