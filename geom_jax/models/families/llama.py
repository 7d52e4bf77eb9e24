"""Llama (Touvron et al. 2023, arXiv:2302.13971; Llama 3, arXiv:2407.21783):
pre-RMSNorm, SwiGLU MLP, RoPE with optional linear / Llama-3.1 scaling,
grouped-query attention. Also SmolLM2 and the GGUF files of this package."""

from __future__ import annotations

from . import family, llamalike

HANDLED = llamalike.LLAMA_LIKE_KEYS | {"attention_bias", "mlp_bias"}


def config(d: dict) -> dict:
    bias = bool(d.get("attention_bias", False))
    return dict(
        llamalike.llama_like(d, "llama"),
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=bool(d.get("mlp_bias", False)),
    )


GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}

_LLAMA3_8B = dict(
    architectures=["LlamaForCausalLM"],
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    hidden_act="silu",
    tie_word_embeddings=False,
)

PRESETS = {
    "llama-3-8b": _LLAMA3_8B,
    "llama-3.1-8b": {
        **_LLAMA3_8B,
        "max_position_embeddings": 131072,
        "rope_scaling": dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    },
    "smollm2-135m": dict(
        architectures=["LlamaForCausalLM"],
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        hidden_act="silu",
        tie_word_embeddings=True,
        initializer_range=0.041666666666666664,
    ),
}

FAMILY = family.register(
    family.Family(
        name="llama",
        architectures=("LlamaForCausalLM",),
        model_types=("llama",),
        handled=HANDLED,
        config=config,
        params=llamalike.llama_like_params,
        gguf_architecture="llama",
        gguf_names=GGUF_NAMES,
        presets=PRESETS,
        aliases={
            "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
            "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
        },
    )
)
