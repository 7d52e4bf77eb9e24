"""Where each Decoder parameter comes from in a Hugging Face state dict.

`param_specs(cfg)` lists, for every parameter path of the NNX state, the HF
tensor name (with `{i}` for the layer) and the `Layout` (a NumPy transform
that also maps shards back to slices of the HF tensor) into our layout.
HF Linear weights are [out, in]; ours are [in, ...out] so every matmul is
x @ W without a transpose at run time.
"""

from __future__ import annotations

import dataclasses

from ..config import DecoderConfig
from .layout import SAME, Layout, heads_to_embed, in_out, neox_qkv, neox_qkv_bias, reshape


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    path: tuple[str, ...]
    source: str
    transform: Layout
    stacked: bool


def param_specs(cfg: DecoderConfig) -> list[ParamSpec]:
    H, KV, hd, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
    S = lambda path, src, fn=SAME, stacked=True: ParamSpec(tuple(path.split(".")), src, fn, stacked)
    if cfg.family == "gpt_neox":
        p = "gpt_neox.layers.{i}."
        specs = [
            S("embed", "gpt_neox.embed_in.weight", stacked=False),
            S("final_norm_scale", "gpt_neox.final_layer_norm.weight", stacked=False),
            S("final_norm_bias", "gpt_neox.final_layer_norm.bias", stacked=False),
            S("blocks.attn_norm_scale", p + "input_layernorm.weight"),
            S("blocks.attn_norm_bias", p + "input_layernorm.bias"),
            S("blocks.mlp_norm_scale", p + "post_attention_layernorm.weight"),
            S("blocks.mlp_norm_bias", p + "post_attention_layernorm.bias"),
            S("blocks.wq", p + "attention.query_key_value.weight", neox_qkv(0, H, hd)),
            S("blocks.wk", p + "attention.query_key_value.weight", neox_qkv(1, H, hd)),
            S("blocks.wv", p + "attention.query_key_value.weight", neox_qkv(2, H, hd)),
            S("blocks.wo", p + "attention.dense.weight", heads_to_embed(H, hd)),
            S("blocks.w_up", p + "mlp.dense_h_to_4h.weight", in_out(cfg.intermediate_size)),
            S("blocks.b_up", p + "mlp.dense_h_to_4h.bias"),
            S("blocks.w_down", p + "mlp.dense_4h_to_h.weight", in_out(D)),
            S("blocks.b_down", p + "mlp.dense_4h_to_h.bias"),
        ]
        if cfg.qkv_bias:
            specs += [
                S("blocks.bq", p + "attention.query_key_value.bias", neox_qkv_bias(0, H, hd)),
                S("blocks.bk", p + "attention.query_key_value.bias", neox_qkv_bias(1, H, hd)),
                S("blocks.bv", p + "attention.query_key_value.bias", neox_qkv_bias(2, H, hd)),
            ]
        if cfg.out_bias:
            specs.append(S("blocks.bo", p + "attention.dense.bias"))
        if not cfg.tie_word_embeddings:
            specs.append(S("lm_head", "embed_out.weight", stacked=False))
        return specs
    p = "model.layers.{i}."
    specs = [
        S("embed", "model.embed_tokens.weight", stacked=False),
        S("final_norm_scale", "model.norm.weight", stacked=False),
        S("blocks.attn_norm_scale", p + "input_layernorm.weight"),
        S("blocks.mlp_norm_scale", p + "post_attention_layernorm.weight"),
        S("blocks.wq", p + "self_attn.q_proj.weight", in_out(H, hd)),
        S("blocks.wk", p + "self_attn.k_proj.weight", in_out(KV, hd)),
        S("blocks.wv", p + "self_attn.v_proj.weight", in_out(KV, hd)),
        S("blocks.wo", p + "self_attn.o_proj.weight", heads_to_embed(H, hd)),
        S("blocks.w_gate", p + "mlp.gate_proj.weight", in_out(cfg.intermediate_size)),
        S("blocks.w_up", p + "mlp.up_proj.weight", in_out(cfg.intermediate_size)),
        S("blocks.w_down", p + "mlp.down_proj.weight", in_out(D)),
    ]
    if cfg.qkv_bias:
        specs += [
            S("blocks.bq", p + "self_attn.q_proj.bias", reshape(H, hd)),
            S("blocks.bk", p + "self_attn.k_proj.bias", reshape(KV, hd)),
            S("blocks.bv", p + "self_attn.v_proj.bias", reshape(KV, hd)),
        ]
    if cfg.out_bias:
        specs.append(S("blocks.bo", p + "self_attn.o_proj.bias"))
    if cfg.mlp_bias:
        specs += [
            S("blocks.b_gate", p + "mlp.gate_proj.bias"),
            S("blocks.b_up", p + "mlp.up_proj.bias"),
            S("blocks.b_down", p + "mlp.down_proj.bias"),
        ]
    if not cfg.tie_word_embeddings:
        specs.append(S("lm_head", "lm_head.weight", stacked=False))
    return specs
