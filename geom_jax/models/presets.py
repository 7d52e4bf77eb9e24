"""Full-size configurations of the studied models, embedded so that
random-weight runs (benchmarks, sharding plans) need no download.

Values are the `config.json` fields of the published checkpoints, passed
through `from_hf_config` like any downloaded config.
"""

from __future__ import annotations

from .config import DecoderConfig, from_hf_config

_LLAMA3_8B = dict(
    architectures=["LlamaForCausalLM"],
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    hidden_act="silu",
    tie_word_embeddings=False,
)

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

HF_CONFIGS: dict[str, dict] = {
    "llama-3-8b": _LLAMA3_8B,
    "llama-3.1-8b": {
        **_LLAMA3_8B,
        "max_position_embeddings": 131072,
        "rope_scaling": dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    },
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
    ),
    "pythia-6.9b": _PYTHIA_6_9B,
    "pythia-6.9b-deduped": _PYTHIA_6_9B,
    "smollm2-135m": dict(
        architectures=["LlamaForCausalLM"],
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        hidden_act="silu",
        tie_word_embeddings=True,
    ),
}


def names() -> list[str]:
    return sorted(HF_CONFIGS)


def get(name: str) -> DecoderConfig:
    """The embedded full-size DecoderConfig of `name` (see `names()`)."""
    key = name.lower()
    if key not in HF_CONFIGS:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(names())}")
    return from_hf_config(HF_CONFIGS[key], name=key, checkpoint_id=f"preset:{key}")
