"""The Llama-like config mapping and parameter layout (RMSNorm, gated MLP, RoPE,
separate q/k/v) that most families share, as penzai's llamalike_common does;
a family that really differs (GPT-NeoX, GPT-2, OPT) keeps its own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import DecoderConfig
from ..loading.hf_layout import ParamSpec
from ..loading.layout import SAME, Layout, heads_to_embed, in_out, reshape
from .hf_config import ROPE_KEYS, activation, get, rope

LLAMA_LIKE_KEYS = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "hidden_act",
        "max_position_embeddings",
        "rms_norm_eps",
        "tie_word_embeddings",
        "pretraining_tp",  # a tensor-parallel re-association of the same matmuls
    }
    | ROPE_KEYS
)


def llama_like(d: Mapping[str, Any], family: str, *, act_keys=("hidden_act",)) -> dict:
    """The DecoderConfig fields of a Llama-style config.json (RMSNorm, gated
    MLP, RoPE, separate q/k/v)."""
    heads = int(d["num_attention_heads"])
    hidden = int(d["hidden_size"])
    head_dim = int(get(d, "head_dim", default=hidden // heads))
    theta, scaling, partial = rope(d, family)
    return dict(
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(get(d, "num_key_value_heads", default=heads)),
        head_dim=head_dim,
        intermediate_size=int(d["intermediate_size"]),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        activation=activation(d, family, *act_keys, default="silu"),
        norm="rms",
        norm_eps=float(get(d, "rms_norm_eps", default=1e-6)),
        mlp="gated",
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_dim=int(head_dim * partial),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
    )


def spec(path: str, source: str, transform: Layout = SAME, stacked: bool = True) -> ParamSpec:
    return ParamSpec(tuple(path.split(".")), source, transform, stacked)


def llama_like_params(
    cfg: DecoderConfig, *, prefix: str = "model.", norms: Mapping[str, str] | None = None
) -> list[ParamSpec]:
    """HF Llama-style names (`model.layers.{i}.self_attn.q_proj`, ...), with
    the optional biases, QK-norms and sublayer norms `cfg` asks for.

    `norms` maps our norm parameter names to HF module names (default: the
    Llama pair input_layernorm / post_attention_layernorm)."""
    H, KV, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    D, F = cfg.hidden_size, cfg.intermediate_size
    p = prefix + "layers.{i}."
    norms = dict(norms or {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"})
    specs = [
        spec("embed", prefix + "embed_tokens.weight", stacked=False),
        spec("blocks.wq", p + "self_attn.q_proj.weight", in_out(H, hd)),
        spec("blocks.wk", p + "self_attn.k_proj.weight", in_out(KV, hd)),
        spec("blocks.wv", p + "self_attn.v_proj.weight", in_out(KV, hd)),
        spec("blocks.wo", p + "self_attn.o_proj.weight", heads_to_embed(H, hd)),
        spec("blocks.w_gate", p + "mlp.gate_proj.weight", in_out(F)),
        spec("blocks.w_up", p + "mlp.up_proj.weight", in_out(F)),
        spec("blocks.w_down", p + "mlp.down_proj.weight", in_out(D)),
    ]
    if cfg.final_norm:
        specs.append(spec("final_norm_scale", prefix + "norm.weight", stacked=False))
    for ours, theirs in norms.items():
        specs.append(spec(f"blocks.{ours}_scale", p + theirs + ".weight"))
    if cfg.qk_norm == "head":
        specs += [
            spec("blocks.q_norm_scale", p + "self_attn.q_norm.weight"),
            spec("blocks.k_norm_scale", p + "self_attn.k_norm.weight"),
        ]
    elif cfg.qk_norm == "projection":
        specs += [
            spec("blocks.q_norm_scale", p + "self_attn.q_norm.weight", reshape(H, hd)),
            spec("blocks.k_norm_scale", p + "self_attn.k_norm.weight", reshape(KV, hd)),
        ]
    if cfg.qkv_bias:
        specs += [
            spec("blocks.bq", p + "self_attn.q_proj.bias", reshape(H, hd)),
            spec("blocks.bk", p + "self_attn.k_proj.bias", reshape(KV, hd)),
            spec("blocks.bv", p + "self_attn.v_proj.bias", reshape(KV, hd)),
        ]
    if cfg.out_bias:
        specs.append(spec("blocks.bo", p + "self_attn.o_proj.bias"))
    if cfg.mlp_bias:
        specs += [
            spec("blocks.b_gate", p + "mlp.gate_proj.bias"),
            spec("blocks.b_up", p + "mlp.up_proj.bias"),
            spec("blocks.b_down", p + "mlp.down_proj.bias"),
        ]
    if not cfg.tie_word_embeddings:
        specs.append(spec("lm_head", "lm_head.weight", stacked=False))
    return specs


__all__ = ["LLAMA_LIKE_KEYS", "llama_like", "llama_like_params", "spec"]
