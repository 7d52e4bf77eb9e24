"""GPT-2 (Radford et al. 2019): learned absolute positions, pre-LayerNorm,
plain MLP with the tanh GELU, fused q|k|v in a Conv1D (weights stored
[in, out]), biases everywhere, tied embeddings."""

from __future__ import annotations

from ..loading.layout import SAME, Layout, conv1d, conv1d_bias
from . import family, hf_config, llamalike


def config(d: dict) -> dict:
    if d.get("scale_attn_weights") is False:
        raise hf_config.refuse("gpt2", "scale_attn_weights", False)
    if d.get("scale_attn_by_inverse_layer_idx"):
        raise hf_config.refuse("gpt2", "scale_attn_by_inverse_layer_idx", True)
    hidden, heads = int(d["n_embd"]), int(d["n_head"])
    return dict(
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(d["n_layer"]),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=int(hf_config.get(d, "n_inner", default=4 * hidden)),
        max_position_embeddings=int(d.get("n_positions", 1024)),
        norm="layer",
        norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
        mlp="plain",
        activation=hf_config.activation(d, "gpt2", "activation_function", default="gelu_new"),
        positions="learned",
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
    )


def params(cfg):
    H, hd = cfg.num_heads, cfg.head_dim
    S, p = llamalike.spec, "transformer.h.{i}."
    specs = [
        S("embed", "transformer.wte.weight", stacked=False),
        S("pos_embed", "transformer.wpe.weight", stacked=False),
        S("final_norm_scale", "transformer.ln_f.weight", stacked=False),
        S("final_norm_bias", "transformer.ln_f.bias", stacked=False),
        S("blocks.attn_norm_scale", p + "ln_1.weight"),
        S("blocks.attn_norm_bias", p + "ln_1.bias"),
        S("blocks.mlp_norm_scale", p + "ln_2.weight"),
        S("blocks.mlp_norm_bias", p + "ln_2.bias"),
        S("blocks.wo", p + "attn.c_proj.weight", Layout(split=((H, hd), (-1,)))),
        S("blocks.bo", p + "attn.c_proj.bias"),
        S("blocks.w_up", p + "mlp.c_fc.weight", SAME),
        S("blocks.b_up", p + "mlp.c_fc.bias"),
        S("blocks.w_down", p + "mlp.c_proj.weight", SAME),
        S("blocks.b_down", p + "mlp.c_proj.bias"),
    ]
    for name, which in (("q", 0), ("k", 1), ("v", 2)):
        specs += [
            S(f"blocks.w{name}", p + "attn.c_attn.weight", conv1d(H, hd, pick=which)),
            S(f"blocks.b{name}", p + "attn.c_attn.bias", conv1d_bias(H, hd, pick=which)),
        ]
    if not cfg.tie_word_embeddings:
        specs.append(S("lm_head", "lm_head.weight", stacked=False))
    return specs


_GPT2 = dict(
    architectures=["GPT2LMHeadModel"],
    vocab_size=50257,
    n_positions=1024,
    n_embd=768,
    n_layer=12,
    n_head=12,
    activation_function="gelu_new",
    layer_norm_epsilon=1e-5,
    tie_word_embeddings=True,
)

FAMILY = family.register(
    family.Family(
        name="gpt2",
        architectures=("GPT2LMHeadModel",),
        model_types=("gpt2",),
        handled=frozenset(
            {
                "vocab_size",
                "n_positions",
                "n_ctx",
                "n_embd",
                "n_layer",
                "n_head",
                "n_inner",
                "activation_function",
                "layer_norm_epsilon",
                "scale_attn_weights",
                "scale_attn_by_inverse_layer_idx",
                # float32 softmax either way here
                "reorder_and_upcast_attn",
                # sequence-classification / double-heads options, unused by the LM
                "summary_type",
                "summary_use_proj",
                "summary_activation",
                "summary_proj_to_labels",
                "summary_first_dropout",
                "tie_word_embeddings",
            }
        ),
        config=config,
        params=params,
        base_prefix="transformer.",
        presets={
            "gpt2": _GPT2,
            "gpt2-xl": dict(_GPT2, n_embd=1600, n_layer=48, n_head=25),
        },
        aliases={"gpt2": "openai-community/gpt2", "gpt2-xl": "openai-community/gpt2-xl"},
    )
)
