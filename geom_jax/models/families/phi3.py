"""Phi-3 (Abdin et al. 2024, arXiv:2404.14219): Llama's layer with the q, k
and v projections fused into one `qkv_proj` (rows q | k | v) and gate and up
fused into `gate_up_proj` (rows gate | up), split into the shared layout at
load time; optional sliding window on every layer. `longrope` scaling
(Phi-3-*-128k, Phi-3.5) is not ported and is refused."""

from __future__ import annotations

from ..loading.layout import heads_to_embed, in_out, rows
from . import family, llamalike


def config(d: dict) -> dict:
    window = d.get("sliding_window")
    return dict(llamalike.llama_like(d, "phi3"), sliding_window=int(window) if window else None)


def params(cfg):
    H, KV, hd, D, F = (
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.hidden_size,
        cfg.intermediate_size,
    )
    S, p = llamalike.spec, "model.layers.{i}."
    specs = [
        S("embed", "model.embed_tokens.weight", stacked=False),
        S("final_norm_scale", "model.norm.weight", stacked=False),
        S("blocks.attn_norm_scale", p + "input_layernorm.weight"),
        S("blocks.mlp_norm_scale", p + "post_attention_layernorm.weight"),
        S("blocks.wq", p + "self_attn.qkv_proj.weight", rows(0, H, hd)),
        S("blocks.wk", p + "self_attn.qkv_proj.weight", rows(H * hd, KV, hd)),
        S("blocks.wv", p + "self_attn.qkv_proj.weight", rows((H + KV) * hd, KV, hd)),
        S("blocks.wo", p + "self_attn.o_proj.weight", heads_to_embed(H, hd)),
        S("blocks.w_gate", p + "mlp.gate_up_proj.weight", rows(0, F)),
        S("blocks.w_up", p + "mlp.gate_up_proj.weight", rows(F, F)),
        S("blocks.w_down", p + "mlp.down_proj.weight", in_out(D)),
    ]
    if not cfg.tie_word_embeddings:
        specs.append(S("lm_head", "lm_head.weight", stacked=False))
    return specs


FAMILY = family.register(
    family.Family(
        name="phi3",
        architectures=("Phi3ForCausalLM",),
        model_types=("phi3",),
        # HF's Phi-3 has no biases whatever `attention_bias` says, and reads
        # `original_max_position_embeddings` only for longrope.
        handled=llamalike.LLAMA_LIKE_KEYS
        | {"sliding_window", "attention_bias", "original_max_position_embeddings"},
        config=config,
        params=params,
        presets={
            "phi-3-mini": dict(
                architectures=["Phi3ForCausalLM"],
                vocab_size=32064,
                hidden_size=3072,
                intermediate_size=8192,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=32,
                max_position_embeddings=4096,
                original_max_position_embeddings=4096,
                rms_norm_eps=1e-5,
                rope_theta=10000.0,
                sliding_window=2047,
                hidden_act="silu",
                tie_word_embeddings=False,
            )
        },
        aliases={"phi-3-mini": "microsoft/Phi-3-mini-4k-instruct"},
    )
)
