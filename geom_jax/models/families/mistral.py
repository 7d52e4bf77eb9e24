"""Mistral (Jiang et al. 2023, arXiv:2310.06825): Llama's layer with a
sliding attention window on every layer."""

from __future__ import annotations

from . import family, llamalike


def config(d: dict) -> dict:
    bias = bool(d.get("attention_bias", False))
    window = d.get("sliding_window")
    if d.get("use_sliding_window") is False:
        window = None
    return dict(
        llamalike.llama_like(d, "mistral"),
        qkv_bias=bias,
        out_bias=bias,
        sliding_window=int(window) if window else None,
    )


FAMILY = family.register(
    family.Family(
        name="mistral",
        architectures=("MistralForCausalLM",),
        model_types=("mistral",),
        handled=llamalike.LLAMA_LIKE_KEYS
        | {"attention_bias", "sliding_window", "use_sliding_window"},
        config=config,
        params=llamalike.llama_like_params,
        presets={
            "mistral-7b": dict(
                architectures=["MistralForCausalLM"],
                vocab_size=32000,
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                max_position_embeddings=32768,
                rms_norm_eps=1e-5,
                rope_theta=10000.0,
                sliding_window=4096,
                hidden_act="silu",
                tie_word_embeddings=False,
            )
        },
        aliases={"mistral-7b": "mistralai/Mistral-7B-v0.1"},
    )
)
