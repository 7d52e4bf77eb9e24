"""OPT (Zhang et al. 2022, arXiv:2205.01068): learned absolute positions with
an offset of 2, pre-LayerNorm, plain ReLU MLP, biases everywhere, tied
embeddings. The post-LayerNorm variant with project_in/project_out
(OPT-350m: `do_layer_norm_before=false`, `word_embed_proj_dim` 512) is
refused: its last hidden state has another width than the others."""

from __future__ import annotations

from ..loading.layout import heads_to_embed, in_out, reshape
from . import family, hf_config, llamalike


def config(d: dict) -> dict:
    hidden, heads = int(d["hidden_size"]), int(d["num_attention_heads"])
    if d.get("do_layer_norm_before", True) is not True:
        raise hf_config.refuse("opt", "do_layer_norm_before", d["do_layer_norm_before"])
    if d.get("_remove_final_layer_norm"):
        raise hf_config.refuse("opt", "_remove_final_layer_norm", True)
    proj = d.get("word_embed_proj_dim")
    if proj is not None and int(proj) != hidden:
        raise hf_config.refuse(
            "opt", "word_embed_proj_dim", proj, f"project_in/out, hidden {hidden}"
        )
    if d.get("layer_norm_elementwise_affine", True) is not True:
        raise hf_config.refuse("opt", "layer_norm_elementwise_affine", False)
    bias = bool(d.get("enable_bias", True))
    return dict(
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=int(d["ffn_dim"]),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        norm="layer",
        norm_eps=1e-5,
        mlp="plain",
        activation=hf_config.activation(d, "opt", "activation_function", default="relu"),
        positions="learned",
        position_offset=2,
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=bias,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
    )


def params(cfg):
    H, hd, D, F = cfg.num_heads, cfg.head_dim, cfg.hidden_size, cfg.intermediate_size
    S, p = llamalike.spec, "model.decoder.layers.{i}."
    specs = [
        S("embed", "model.decoder.embed_tokens.weight", stacked=False),
        S("pos_embed", "model.decoder.embed_positions.weight", stacked=False),
        S("final_norm_scale", "model.decoder.final_layer_norm.weight", stacked=False),
        S("final_norm_bias", "model.decoder.final_layer_norm.bias", stacked=False),
        S("blocks.attn_norm_scale", p + "self_attn_layer_norm.weight"),
        S("blocks.attn_norm_bias", p + "self_attn_layer_norm.bias"),
        S("blocks.mlp_norm_scale", p + "final_layer_norm.weight"),
        S("blocks.mlp_norm_bias", p + "final_layer_norm.bias"),
        S("blocks.wq", p + "self_attn.q_proj.weight", in_out(H, hd)),
        S("blocks.wk", p + "self_attn.k_proj.weight", in_out(H, hd)),
        S("blocks.wv", p + "self_attn.v_proj.weight", in_out(H, hd)),
        S("blocks.wo", p + "self_attn.out_proj.weight", heads_to_embed(H, hd)),
        S("blocks.w_up", p + "fc1.weight", in_out(F)),
        S("blocks.w_down", p + "fc2.weight", in_out(D)),
    ]
    if cfg.qkv_bias:
        specs += [S(f"blocks.b{n}", p + f"self_attn.{n}_proj.bias", reshape(H, hd)) for n in "qkv"]
        specs += [
            S("blocks.bo", p + "self_attn.out_proj.bias"),
            S("blocks.b_up", p + "fc1.bias"),
            S("blocks.b_down", p + "fc2.bias"),
        ]
    if not cfg.tie_word_embeddings:
        specs.append(S("lm_head", "lm_head.weight", stacked=False))
    return specs


_OPT_6_7B = dict(
    architectures=["OPTForCausalLM"],
    vocab_size=50272,
    hidden_size=4096,
    ffn_dim=16384,
    num_hidden_layers=32,
    num_attention_heads=32,
    max_position_embeddings=2048,
    word_embed_proj_dim=4096,
    do_layer_norm_before=True,
    activation_function="relu",
    tie_word_embeddings=True,
)

FAMILY = family.register(
    family.Family(
        name="opt",
        architectures=("OPTForCausalLM",),
        model_types=("opt",),
        handled=frozenset(
            {
                "vocab_size",
                "hidden_size",
                "ffn_dim",
                "num_hidden_layers",
                "num_attention_heads",
                "max_position_embeddings",
                "do_layer_norm_before",
                "_remove_final_layer_norm",
                "word_embed_proj_dim",
                "activation_function",
                "enable_bias",
                "layer_norm_elementwise_affine",
                "tie_word_embeddings",
            }
        ),
        config=config,
        params=params,
        base_prefix="model.",
        presets={
            "opt-6.7b": _OPT_6_7B,
            "opt-125m": dict(
                _OPT_6_7B,
                hidden_size=768,
                ffn_dim=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                word_embed_proj_dim=768,
            ),
        },
        aliases={"opt-6.7b": "facebook/opt-6.7b", "opt-125m": "facebook/opt-125m"},
    )
)
