"""A tiny random Llama checkpoint with SmolLM2's tokenizer, written without torch.

Used by the pipeline, experiment and sharding tests: it loads through the
same `geom_jax.models.load` path as a real Hugging Face checkpoint folder,
runs in milliseconds, and its dimensions divide meshes of up to 8 devices.
"""

from __future__ import annotations

import json
import os

import numpy as np

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=8,
    num_key_value_heads=4,
    num_hidden_layers=3,
    head_dim=8,
)


def write_tiny_llama(path: str, *, seed: int = 0, **overrides) -> str:
    """Writes config.json, model.safetensors and tokenizer files to ``path``."""
    from safetensors.numpy import save_file

    from geom_jax import models

    tokenizer = models.load_tokenizer("smollm2-135m")
    cfg = dict(TINY, **overrides)
    vocab = len(tokenizer)
    vocab += -vocab % 8
    d, f, h, kv, hd = (
        cfg["hidden_size"],
        cfg["intermediate_size"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["head_dim"],
    )
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(vocab, d), "model.norm.weight": 1 + w(d) * 0.1}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors.update(
            {
                p + "input_layernorm.weight": 1 + w(d) * 0.1,
                p + "post_attention_layernorm.weight": 1 + w(d) * 0.1,
                p + "self_attn.q_proj.weight": w(h * hd, d),
                p + "self_attn.k_proj.weight": w(kv * hd, d),
                p + "self_attn.v_proj.weight": w(kv * hd, d),
                p + "self_attn.o_proj.weight": w(d, h * hd),
                p + "mlp.gate_proj.weight": w(f, d),
                p + "mlp.up_proj.weight": w(f, d),
                p + "mlp.down_proj.weight": w(d, f),
            }
        )
    tensors["lm_head.weight"] = w(vocab, d)
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **cfg,
    }
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(config, fh, indent=1)
    tokenizer.save_pretrained(path)
    return path
