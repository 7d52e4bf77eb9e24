"""Qwen3 (Yang et al. 2025, arXiv:2505.09388): Llama's layer with a per-head
RMSNorm on queries and keys before RoPE (QK-norm), explicit head_dim."""

from __future__ import annotations

from . import family, llamalike
from .qwen2 import SLIDING_KEYS, no_sliding_window


def config(d: dict) -> dict:
    no_sliding_window(d, "qwen3")
    bias = bool(d.get("attention_bias", False))
    return dict(llamalike.llama_like(d, "qwen3"), qk_norm="head", qkv_bias=bias, out_bias=bias)


_QWEN3_8B = dict(
    architectures=["Qwen3ForCausalLM"],
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    hidden_act="silu",
    attention_bias=False,
    use_sliding_window=False,
    max_window_layers=36,
    tie_word_embeddings=False,
)

FAMILY = family.register(
    family.Family(
        name="qwen3",
        architectures=("Qwen3ForCausalLM",),
        model_types=("qwen3",),
        handled=llamalike.LLAMA_LIKE_KEYS | SLIDING_KEYS | {"layer_types", "attention_bias"},
        config=config,
        params=llamalike.llama_like_params,
        presets={
            "qwen3-8b": _QWEN3_8B,
            "qwen3-0.6b": dict(
                _QWEN3_8B,
                hidden_size=1024,
                intermediate_size=3072,
                num_hidden_layers=28,
                num_attention_heads=16,
                num_key_value_heads=8,
                max_window_layers=28,
                tie_word_embeddings=True,
            ),
        },
        aliases={"qwen3-8b": "Qwen/Qwen3-8B", "qwen3-0.6b": "Qwen/Qwen3-0.6B"},
    )
)
