"""OLMo 2 (OLMo et al. 2024, arXiv:2501.00656): RMSNorm after each sublayer
(x + norm(f(x)), no pre-norm) and RMSNorm over the whole query and key
projections before RoPE. Intermediate training checkpoints are revisions
(e.g. `stage1-step1000-tokens5B`)."""

from __future__ import annotations

from . import family, llamalike

NORMS = {
    "attn_post_norm": "post_attention_layernorm",
    "mlp_post_norm": "post_feedforward_layernorm",
}


def config(d: dict) -> dict:
    bias = bool(d.get("attention_bias", False))
    return dict(
        llamalike.llama_like(d, "olmo2"),
        sublayer_norms="post",
        qk_norm="projection",
        qkv_bias=bias,
        out_bias=bias,
    )


FAMILY = family.register(
    family.Family(
        name="olmo2",
        architectures=("Olmo2ForCausalLM",),
        model_types=("olmo2",),
        handled=llamalike.LLAMA_LIKE_KEYS | {"attention_bias"},
        config=config,
        params=lambda cfg: llamalike.llama_like_params(cfg, norms=NORMS),
        presets={
            "olmo-2-7b": dict(
                architectures=["Olmo2ForCausalLM"],
                vocab_size=100352,
                hidden_size=4096,
                intermediate_size=11008,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=32,
                max_position_embeddings=4096,
                rms_norm_eps=1e-6,
                rope_theta=500000.0,
                hidden_act="silu",
                attention_bias=False,
                tie_word_embeddings=False,
            )
        },
        aliases={"olmo-2-7b": "allenai/OLMo-2-1124-7B"},
    )
)
