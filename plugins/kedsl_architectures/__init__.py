"""Built-in architectures: where each model family keeps its parts.

Module paths use ``{}`` for the layer index. GPT-2's MLP projections are ``Conv1D``
modules whose weight is stored transposed, (in_features, out_features).
"""
from __future__ import annotations

from dataclasses import replace

from kedsl.plugin import ArchitectureSpec, hookimpl

LLAMA_FAMILY = ArchitectureSpec(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo", "olmo2", "phi3", "granite"),
    layers="model.layers",
    mlp="model.layers.{}.mlp",
    mlp_out="model.layers.{}.mlp.down_proj",
    attn="model.layers.{}.self_attn",
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
    doc="LLaMA-style decoder: gated MLP (gate_proj, up_proj, down_proj), RMSNorm.",
)

# Gemma keeps its parts where LLaMA does; what differs is the MLP output's norm.
GEMMA3 = replace(
    LLAMA_FAMILY,
    name="gemma3",
    model_types=("gemma3_text", "gemma2"),
    mlp_out_norm="model.layers.{}.post_feedforward_layernorm",
    doc=(
        "Gemma 3 (text; also Gemma 2): GeGLU MLP (gelu-tanh gate; the key is down_proj's input as in "
        "LLaMA), four RMSNorms per block with the MLP output normed before the residual (mlp_out_norm), "
        "embeddings scaled by sqrt(d) inside the embedding module and tied to the head, sliding-window "
        "attention on 5 of 6 layers, a 262k vocabulary (logits are computed only where read)."
    ),
)

GPT2 = ArchitectureSpec(
    name="gpt2",
    model_types=("gpt2",),
    layers="transformer.h",
    mlp="transformer.h.{}.mlp",
    mlp_out="transformer.h.{}.mlp.c_proj",
    attn="transformer.h.{}.attn",
    embed="transformer.wte",
    final_norm="transformer.ln_f",
    lm_head="lm_head",
    transposed=True,
    doc="GPT-2: Conv1D projections with transposed weights (in, out).",
)

GPTJ = ArchitectureSpec(
    name="gptj",
    model_types=("gptj",),
    layers="transformer.h",
    mlp="transformer.h.{}.mlp",
    mlp_out="transformer.h.{}.mlp.fc_out",
    attn="transformer.h.{}.attn",
    embed="transformer.wte",
    final_norm="transformer.ln_f",
    lm_head="lm_head",
    doc="GPT-J: parallel attention and MLP (fc_in, fc_out).",
)

GPT_NEOX = ArchitectureSpec(
    name="gpt_neox",
    model_types=("gpt_neox",),
    layers="gpt_neox.layers",
    mlp="gpt_neox.layers.{}.mlp",
    mlp_out="gpt_neox.layers.{}.mlp.dense_4h_to_h",
    attn="gpt_neox.layers.{}.attention",
    embed="gpt_neox.embed_in",
    final_norm="gpt_neox.final_layer_norm",
    lm_head="embed_out",
    doc="GPT-NeoX / Pythia: dense_h_to_4h, dense_4h_to_h.",
)


@hookimpl
def register_architectures() -> list[ArchitectureSpec]:
    return [LLAMA_FAMILY, GEMMA3, GPT2, GPTJ, GPT_NEOX]
