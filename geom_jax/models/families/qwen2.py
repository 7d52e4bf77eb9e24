"""Qwen2 / Qwen2.5 (Yang et al. 2024, arXiv:2407.10671; arXiv:2412.15115):
Llama's layer with biases on the q, k and v projections (none on o)."""

from __future__ import annotations

from . import family, hf_config, llamalike

SLIDING_KEYS = frozenset({"use_sliding_window", "sliding_window", "max_window_layers"})


def no_sliding_window(d: dict, family: str) -> None:
    """Qwen checkpoints ship `sliding_window` with `use_sliding_window: false`
    (the window is off); a window that is on is not ported."""
    if d.get("use_sliding_window"):
        raise hf_config.refuse(family, "use_sliding_window", d["use_sliding_window"])
    flags = hf_config.layer_types(d, family, int(d["num_hidden_layers"]))
    if flags and any(flags):
        raise hf_config.refuse(family, "layer_types", d["layer_types"], "sliding-window layers")


def config(d: dict) -> dict:
    no_sliding_window(d, "qwen2")
    return dict(llamalike.llama_like(d, "qwen2"), qkv_bias=True)


_QWEN25_7B = dict(
    architectures=["Qwen2ForCausalLM"],
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=131072,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    hidden_act="silu",
    sliding_window=131072,
    use_sliding_window=False,
    max_window_layers=28,
    tie_word_embeddings=False,
)

FAMILY = family.register(
    family.Family(
        name="qwen2",
        architectures=("Qwen2ForCausalLM",),
        model_types=("qwen2",),
        handled=llamalike.LLAMA_LIKE_KEYS | SLIDING_KEYS | {"layer_types"},
        config=config,
        params=llamalike.llama_like_params,
        presets={
            "qwen2.5-7b": _QWEN25_7B,
            "qwen2.5-0.5b": dict(
                _QWEN25_7B,
                vocab_size=151936,
                hidden_size=896,
                intermediate_size=4864,
                num_hidden_layers=24,
                num_attention_heads=14,
                num_key_value_heads=2,
                max_position_embeddings=32768,
                sliding_window=32768,
                max_window_layers=24,
                tie_word_embeddings=True,
            ),
        },
        aliases={"qwen2.5-7b": "Qwen/Qwen2.5-7B", "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B"},
    )
)
