"""Gemma 3, text decoder (Gemma Team 2025, arXiv:2503.19786): Gemma 2's layer
with a per-head RMSNorm x (1 + w) on queries and keys instead of attention
soft-capping, five sliding-window layers per global one, and a RoPE base of
its own on the sliding-window layers (`rope_local_base_freq`), the global
layers' possibly linearly scaled. The multimodal Gemma3ForConditionalGeneration
checkpoints (4B and up) are not claimed."""

from __future__ import annotations

from . import family, hf_config, llamalike
from .gemma2 import GEMMA_KEYS, NORMS, gemma_common


def config(d: dict) -> dict:
    params = d.get("rope_parameters") or {}
    per_type = "full_attention" in params or "sliding_attention" in params
    flat = dict(d, rope_parameters=params.get("full_attention")) if per_type else d
    pattern = int(hf_config.get(d, "sliding_window_pattern", "_sliding_window_pattern", default=6))
    out = gemma_common(flat, "gemma3", pattern)
    if per_type:
        local_theta, local_scaling, _ = hf_config.rope(
            flat, "gemma3", params=params.get("sliding_attention") or {}
        )
        if local_scaling is not None:
            raise hf_config.refuse("gemma3", "rope_parameters", dict(params), "scaled local RoPE")
    else:
        local_theta = float(d.get("rope_local_base_freq", 10000.0))
    return dict(out, rope_local_theta=local_theta, qk_norm="head")


_GEMMA3_12B = dict(
    architectures=["Gemma3ForCausalLM"],
    vocab_size=262208,
    hidden_size=3840,
    intermediate_size=15360,
    num_hidden_layers=48,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=256,
    hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=131072,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    rope_local_base_freq=10000.0,
    rope_scaling=dict(rope_type="linear", factor=8.0),
    query_pre_attn_scalar=256,
    sliding_window=1024,
    sliding_window_pattern=6,
    tie_word_embeddings=True,
)

FAMILY = family.register(
    family.Family(
        name="gemma3",
        architectures=("Gemma3ForCausalLM",),
        model_types=("gemma3_text",),
        handled=GEMMA_KEYS
        | {"rope_local_base_freq", "sliding_window_pattern", "_sliding_window_pattern"},
        config=config,
        params=lambda cfg: llamalike.llama_like_params(cfg, norms=NORMS),
        presets={
            "gemma-3-12b": _GEMMA3_12B,
            "gemma-3-1b": dict(
                _GEMMA3_12B,
                vocab_size=262144,
                hidden_size=1152,
                intermediate_size=6912,
                num_hidden_layers=26,
                num_attention_heads=4,
                num_key_value_heads=1,
                max_position_embeddings=32768,
                rope_scaling=None,
                sliding_window=512,
            ),
        },
        aliases={"gemma-3-1b": "google/gemma-3-1b-pt"},
    )
)
