"""Gemma 2 (Gemma Team 2024, arXiv:2408.00118): RMSNorm x (1 + w) before and
after each sublayer, embeddings scaled by sqrt(hidden), GeGLU with the tanh
GELU, queries scaled by query_pre_attn_scalar^-1/2, attention and final
logits soft-capped, sliding-window and global layers alternating."""

from __future__ import annotations

from . import family, hf_config, llamalike

NORMS = {
    "attn_norm": "input_layernorm",
    "attn_post_norm": "post_attention_layernorm",
    "mlp_norm": "pre_feedforward_layernorm",
    "mlp_post_norm": "post_feedforward_layernorm",
}

GEMMA_KEYS = llamalike.LLAMA_LIKE_KEYS | {
    "hidden_activation",
    "attention_bias",
    "query_pre_attn_scalar",
    "sliding_window",
    "sliding_window_size",
    "layer_types",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "cache_implementation",
    "use_bidirectional_attention",
}


def gemma_common(d: dict, family: str, pattern: int) -> dict:
    """The fields Gemma 2 and 3 share; `pattern`: every pattern-th layer is
    global when config.json has no `layer_types`."""
    if d.get("use_bidirectional_attention"):
        raise hf_config.refuse(family, "use_bidirectional_attention", True)
    out = llamalike.llama_like(d, family, act_keys=("hidden_activation", "hidden_act"))
    out["activation"] = hf_config.activation(
        d, family, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh"
    )
    layers = out["num_layers"]
    flags = hf_config.layer_types(d, family, layers)
    if flags is None:
        flags = tuple(bool((i + 1) % pattern) for i in range(layers))
    bias = bool(d.get("attention_bias", False))
    cap = lambda k: float(d[k]) if d.get(k) is not None else None
    window = hf_config.get(d, "sliding_window", "sliding_window_size")
    return dict(
        out,
        norm="rms_one_plus",
        sublayer_norms="pre_post",
        embed_scale=True,
        query_pre_attn_scalar=float(d.get("query_pre_attn_scalar", 256)),
        attn_softcap=cap("attn_logit_softcapping"),
        final_softcap=cap("final_logit_softcapping"),
        sliding_window=int(window) if window and any(flags) else None,
        sliding_layers=flags if window and any(flags) else None,
        qkv_bias=bias,
        out_bias=bias,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
    )


def config(d: dict) -> dict:
    return gemma_common(d, "gemma2", pattern=2)


_GEMMA2_9B = dict(
    architectures=["Gemma2ForCausalLM"],
    vocab_size=256000,
    hidden_size=3584,
    intermediate_size=14336,
    num_hidden_layers=42,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=256,
    hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    query_pre_attn_scalar=256,
    sliding_window=4096,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    tie_word_embeddings=True,
)

FAMILY = family.register(
    family.Family(
        name="gemma2",
        architectures=("Gemma2ForCausalLM",),
        model_types=("gemma2",),
        handled=GEMMA_KEYS,
        config=config,
        params=lambda cfg: llamalike.llama_like_params(cfg, norms=NORMS),
        presets={
            "gemma-2-9b": _GEMMA2_9B,
            "gemma-2-2b": dict(
                _GEMMA2_9B,
                hidden_size=2304,
                intermediate_size=9216,
                num_hidden_layers=26,
                num_attention_heads=8,
                num_key_value_heads=4,
            ),
        },
        aliases={"gemma-2-9b": "google/gemma-2-9b", "gemma-2-2b": "google/gemma-2-2b"},
    )
)
