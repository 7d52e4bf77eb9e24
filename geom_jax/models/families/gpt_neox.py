"""GPT-NeoX / Pythia (Black et al. 2022, arXiv:2204.06745; Biderman et al.
2023, arXiv:2304.01373): LayerNorm with bias, fused per-head q|k|v rows,
partial rotary (`rotary_pct`), parallel residual, plain GELU MLP. Pythia's
training checkpoints are revisions `step0` ... `step143000`."""

from __future__ import annotations

from ..loading.layout import heads_to_embed, in_out, neox_qkv, neox_qkv_bias
from . import family, hf_config, llamalike


def config(d: dict) -> dict:
    heads = int(d["num_attention_heads"])
    hidden = int(d["hidden_size"])
    head_dim = hidden // heads
    theta, scaling, partial = hf_config.rope(d, "gpt_neox")
    bias = bool(d.get("attention_bias", True))
    return dict(
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=head_dim,
        intermediate_size=int(d["intermediate_size"]),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        activation=hf_config.activation(d, "gpt_neox", "hidden_act", default="gelu"),
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_dim=int(head_dim * partial),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        norm="layer",
        norm_eps=float(d.get("layer_norm_eps", 1e-5)),
        mlp="plain",
        parallel_residual=bool(d.get("use_parallel_residual", True)),
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=True,
    )


def params(cfg):
    H, hd, D = cfg.num_heads, cfg.head_dim, cfg.hidden_size
    S, p = llamalike.spec, "gpt_neox.layers.{i}."
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


_PYTHIA_6_9B = dict(
    architectures=["GPTNeoXForCausalLM"],
    vocab_size=50432,
    hidden_size=4096,
    intermediate_size=16384,
    num_hidden_layers=32,
    num_attention_heads=32,
    max_position_embeddings=2048,
    layer_norm_eps=1e-5,
    rotary_pct=0.25,
    rotary_emb_base=10000,
    use_parallel_residual=True,
    hidden_act="gelu",
    tie_word_embeddings=False,
)

FAMILY = family.register(
    family.Family(
        name="gpt_neox",
        architectures=("GPTNeoXForCausalLM",),
        model_types=("gpt_neox",),
        handled=hf_config.ROPE_KEYS
        | {
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "hidden_act",
            "max_position_embeddings",
            "layer_norm_eps",
            "rotary_pct",
            "rotary_emb_base",
            "use_parallel_residual",
            "attention_bias",
            "tie_word_embeddings",
        },
        config=config,
        params=params,
        presets={"pythia-6.9b": _PYTHIA_6_9B, "pythia-6.9b-deduped": _PYTHIA_6_9B},
        aliases={
            "pythia-6.9b": "EleutherAI/pythia-6.9b",
            "pythia-6.9b-deduped": "EleutherAI/pythia-6.9b-deduped",
        },
    )
)
