"""The JAX ports against Hugging Face PyTorch (CPU, float32) on small random
checkpoints written with save_pretrained(safe_serialization=True) and read
back through geom_jax.models.load (acceptance 1 and 2)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from models_helpers import hf_reference, layer_rel_err, save_random_hf  # noqa: E402

import geom_jax.models as gm  # noqa: E402

SMALL = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=3)
T = 37  # several attention blocks of 8, plus a ragged last block

CONFIGS = {
    "llama_gqa_untied": lambda: transformers.LlamaConfig(
        **SMALL, num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False
    ),
    "llama_tied": lambda: transformers.LlamaConfig(
        **SMALL, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True
    ),
    "llama3_rope_scaling": lambda: transformers.LlamaConfig(
        **SMALL,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
    "mistral_sliding_window": lambda: transformers.MistralConfig(
        **SMALL, num_attention_heads=8, num_key_value_heads=2, sliding_window=11
    ),
    "neox_parallel_residual": lambda: transformers.GPTNeoXConfig(
        **SMALL, num_attention_heads=4, rotary_pct=0.25, use_parallel_residual=True
    ),
    "neox_sequential_residual": lambda: transformers.GPTNeoXConfig(
        **SMALL, num_attention_heads=4, rotary_pct=0.5, use_parallel_residual=False
    ),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for i, (name, make) in enumerate(CONFIGS.items()):
        path = str(root / name)
        out[name] = (path, save_random_hf(make(), path, seed=i))
    return out


def _ids(seed, shape, vocab=SMALL["vocab_size"]):
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


def _check(out, ref, hidden_tol=1e-4):
    hs, nll, loss, _ = ref
    assert out.hidden_states.shape == hs.shape
    err = layer_rel_err(out.hidden_states, hs)
    assert err.max() < hidden_tol, err
    np.testing.assert_allclose(np.asarray(out.token_nll), nll, atol=1e-4, rtol=0)
    assert abs(float(out.loss) - loss) <= 1e-5 * abs(loss)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_hf(checkpoints, name):
    path, hf = checkpoints[name]
    model, tok = gm.load(path, attn_block=8)
    assert tok is None and model.config.family in gm.config.FAMILIES
    ids = _ids(1, (2, T))
    out = model(ids, return_logits=True)
    ref = hf_reference(hf, ids)
    _check(out, ref)
    np.testing.assert_allclose(np.asarray(out.logits), ref[3], atol=1e-4 * np.abs(ref[3]).max())


def test_config_fields(checkpoints):
    cfg = gm.load(checkpoints["mistral_sliding_window"][0])[0].config
    assert (cfg.family, cfg.sliding_window, cfg.num_kv_heads, cfg.head_dim) == ("mistral", 11, 2, 8)
    neox = gm.load(checkpoints["neox_parallel_residual"][0])[0].config
    assert (neox.rotary_dim, neox.parallel_residual, neox.norm, neox.tie_word_embeddings) == (
        4,
        True,
        "layer",
        False,
    )
    scaled = gm.load(checkpoints["llama3_rope_scaling"][0])[0].config
    assert scaled.rope_scaling.rope_type == "llama3" and scaled.rope_scaling.factor == 8.0
    assert "sha256" in cfg.checkpoint_id and cfg.name == "mistral_sliding_window"


def test_sharded_checkpoint(tmp_path):
    cfg = transformers.LlamaConfig(**SMALL, num_attention_heads=4, num_key_value_heads=2)
    hf = save_random_hf(cfg, str(tmp_path), seed=7, max_shard_size="60KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    model, _ = gm.load(str(tmp_path))
    ids = _ids(3, (1, T))
    _check(model(ids), hf_reference(hf, ids))


@pytest.mark.parametrize(
    "name", ["llama_gqa_untied", "mistral_sliding_window", "neox_parallel_residual"]
)
def test_right_padded_batch_equals_each_prompt_alone(checkpoints, name):
    path, hf = checkpoints[name]
    model, _ = gm.load(path, attn_block=8)
    lengths = [T, 23, 9, 2]
    ids = _ids(5, (len(lengths), T))
    mask = (np.arange(T)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids = np.where(mask > 0, ids, 0).astype(np.int32)
    batch = model(ids, mask)
    assert np.isfinite(np.asarray(batch.hidden_states)).all()
    nll_b = np.asarray(batch.token_nll)
    total = 0.0
    for b, n in enumerate(lengths):
        alone = model(ids[b : b + 1, :n])
        np.testing.assert_allclose(
            np.asarray(batch.hidden_states)[:, b, :n],
            np.asarray(alone.hidden_states)[:, 0],
            atol=2e-5,
            rtol=0,
        )
        np.testing.assert_allclose(
            nll_b[b, : n - 1], np.asarray(alone.token_nll)[0], atol=2e-5, rtol=0
        )
        assert (nll_b[b, n - 1 :] == 0).all()
        total += float(np.sum(np.asarray(alone.token_nll)))
    assert abs(float(batch.loss) - total / sum(n - 1 for n in lengths)) < 1e-5
    hs, nll, _, _ = hf_reference(hf, ids, mask)
    for b, n in enumerate(lengths):
        err = layer_rel_err(np.asarray(batch.hidden_states)[:, b, :n], hs[:, b, :n])
        assert err.max() < 1e-4
        np.testing.assert_allclose(nll_b[b, : n - 1], nll[b, : n - 1], atol=1e-4)


def test_bfloat16_params_float32_activations(checkpoints):
    path, hf = checkpoints["llama_gqa_untied"]
    model, _ = gm.load(path, param_dtype=jnp.bfloat16)
    assert model.blocks.wq[...].dtype == jnp.bfloat16
    rounded = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    ids = _ids(2, (1, T))
    out = model(ids)
    assert out.hidden_states.dtype == jnp.float32
    _check(out, hf_reference(rounded, ids))


def test_attention_block_size_does_not_change_results(checkpoints):
    path, _ = checkpoints["mistral_sliding_window"]
    ids = _ids(4, (2, T))
    a = gm.load(path, attn_block=5)[0](ids)
    b = gm.load(path, attn_block=1024)[0](ids)
    np.testing.assert_allclose(np.asarray(a.hidden_states), np.asarray(b.hidden_states), atol=1e-5)
