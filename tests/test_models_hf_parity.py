"""Every model family against Hugging Face PyTorch (CPU, float32, eager attention) on
small random checkpoints written with save_pretrained(safe_serialization=True) and read
back through geom_jax.models.load: every hidden state within 1e-4 of the layer's max,
token NLL within 1e-4, loss within 1e-5 relative, logits within 1e-4 of their max; a
right-padded batch equals each prompt alone; configuration fields, sharded
checkpoints, bfloat16 parameters and the attention block size."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from helpers.models_helpers import hf_reference, layer_rel_err, save_random_hf  # noqa: E402

import geom_jax.models as gm  # noqa: E402

V = 211
SMALL = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3)
T = 37  # several attention blocks of 8, plus a ragged last block
EAGER = dict(attn_implementation="eager")

LLAMA_LIKE = {
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

ADDED_FAMILIES = {
    "qwen2_gqa_untied": lambda: transformers.Qwen2Config(
        **SMALL, num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False, **EAGER
    ),
    "qwen2_tied": lambda: transformers.Qwen2Config(
        **dict(SMALL, hidden_size=48, num_hidden_layers=2),
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=True,
        **EAGER,
    ),
    "qwen3_gqa_untied": lambda: transformers.Qwen3Config(
        **SMALL,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=False,
        **EAGER,
    ),
    "qwen3_tied_bias": lambda: transformers.Qwen3Config(
        **dict(SMALL, num_hidden_layers=2),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        attention_bias=True,
        tie_word_embeddings=True,
        **EAGER,
    ),
    "gemma2_tied": lambda: transformers.Gemma2Config(
        **dict(SMALL, num_hidden_layers=4),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=12,
        sliding_window=11,
        attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0,
        **EAGER,
    ),
    "gemma2_untied_mqa": lambda: transformers.Gemma2Config(
        **dict(SMALL, hidden_size=48),
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=12,
        sliding_window=5,
        tie_word_embeddings=False,
        **EAGER,
    ),
    "gemma3_tied": lambda: transformers.Gemma3TextConfig(
        **dict(SMALL, num_hidden_layers=4),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=7,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
        },
        **EAGER,
    ),
    "gemma3_untied_default_pattern": lambda: transformers.Gemma3TextConfig(
        **dict(SMALL, num_hidden_layers=7),
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=9,
        tie_word_embeddings=False,
        final_logit_softcapping=5.0,
        **EAGER,
    ),
    "olmo2_gqa_untied": lambda: transformers.Olmo2Config(
        **SMALL, num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False, **EAGER
    ),
    "olmo2_tied": lambda: transformers.Olmo2Config(
        **dict(SMALL, num_hidden_layers=2),
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=True,
        **EAGER,
    ),
    "phi3_gqa_window": lambda: transformers.Phi3Config(
        **SMALL,
        num_attention_heads=8,
        num_key_value_heads=2,
        sliding_window=11,
        pad_token_id=0,
        **EAGER,
    ),
    "phi3_partial_rotary_tied": lambda: transformers.Phi3Config(
        **dict(SMALL, num_hidden_layers=2),
        num_attention_heads=4,
        num_key_value_heads=4,
        partial_rotary_factor=0.5,
        tie_word_embeddings=True,
        pad_token_id=0,
        **EAGER,
    ),
    "gpt2_tied": lambda: transformers.GPT2Config(
        vocab_size=V, n_embd=64, n_layer=3, n_head=4, n_positions=64, **EAGER
    ),
    "gpt2_untied": lambda: transformers.GPT2Config(
        vocab_size=V,
        n_embd=48,
        n_layer=2,
        n_head=6,
        n_inner=80,
        n_positions=48,
        tie_word_embeddings=False,
        **EAGER,
    ),
    "opt_tied": lambda: transformers.OPTConfig(
        vocab_size=V,
        hidden_size=64,
        ffn_dim=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=64,
        **EAGER,
    ),
    "opt_untied": lambda: transformers.OPTConfig(
        vocab_size=V,
        hidden_size=48,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=3,
        max_position_embeddings=40,
        word_embed_proj_dim=48,
        tie_word_embeddings=False,
        **EAGER,
    ),
}

CONFIGS = LLAMA_LIKE | ADDED_FAMILIES
SEEDS = {name: i for i, name in enumerate(LLAMA_LIKE)} | {
    name: 10 + i for i, name in enumerate(ADDED_FAMILIES)
}
FAMILY_OF_CASE = {name: name.split("_")[0] for name in CONFIGS} | {
    "llama3_rope_scaling": "llama",
    "neox_parallel_residual": "gpt_neox",
    "neox_sequential_residual": "gpt_neox",
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, make in CONFIGS.items():
        path = str(root / name)
        out[name] = (path, save_random_hf(make(), path, seed=SEEDS[name]))
    return out


def _ids(seed, shape):
    return np.random.default_rng(seed).integers(0, V, shape).astype(np.int32)


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
    assert tok is None and model.config.family == FAMILY_OF_CASE[name]
    ids = _ids(1, (2, T))
    out = model(ids, return_logits=True)
    ref = hf_reference(hf, ids)
    _check(out, ref)
    np.testing.assert_allclose(np.asarray(out.logits), ref[3], atol=1e-4 * np.abs(ref[3]).max())


PADDED = ["llama_gqa_untied", "mistral_sliding_window", "neox_parallel_residual"]
PADDED += ["qwen2_gqa_untied", "qwen3_gqa_untied", "gemma2_tied", "gemma3_tied"]
PADDED += ["olmo2_gqa_untied", "phi3_gqa_window", "gpt2_tied", "opt_tied"]


@pytest.mark.parametrize("name", PADDED)
def test_right_padded_batch_equals_each_prompt_alone(checkpoints, name):
    path, hf = checkpoints[name]
    model, _ = gm.load(path, attn_block=8)
    lengths = [T, 23, 9, 2] if name in LLAMA_LIKE else [T, 13]
    ids = _ids(5, (len(lengths), T))
    mask = (np.arange(T)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids = np.where(mask > 0, ids, 0).astype(np.int32)
    batch = model(ids, mask)
    hs_b, nll_b = np.asarray(batch.hidden_states), np.asarray(batch.token_nll)
    assert np.isfinite(hs_b).all()
    total = 0.0
    for b, n in enumerate(lengths):
        alone = model(ids[b : b + 1, :n])
        # relative to each layer's max: Gemma's scaled embeddings are ~10x larger
        assert layer_rel_err(hs_b[:, b, :n], np.asarray(alone.hidden_states)[:, 0]).max() < 1e-5
        np.testing.assert_allclose(
            nll_b[b, : n - 1], np.asarray(alone.token_nll)[0], atol=2e-5, rtol=0
        )
        assert (nll_b[b, n - 1 :] == 0).all()
        total += float(np.sum(np.asarray(alone.token_nll)))
    assert abs(float(batch.loss) - total / sum(n - 1 for n in lengths)) < 1e-5
    hs, nll, _, _ = hf_reference(hf, ids, mask)
    for b, n in enumerate(lengths):
        assert layer_rel_err(hs_b[:, b, :n], hs[:, b, :n]).max() < 1e-4
        np.testing.assert_allclose(nll_b[b, : n - 1], nll[b, : n - 1], atol=1e-4)


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


@pytest.mark.parametrize("name,prefix", [("gpt2_tied", "transformer."), ("opt_untied", "model.")])
def test_checkpoint_saved_from_the_base_model(checkpoints, tmp_path, name, prefix):
    """openai-community/gpt2 names its tensors `h.0.attn...`, not `transformer.h.0.attn...`."""
    import shutil

    from safetensors.numpy import load_file, save_file

    path, _ = checkpoints[name]
    tensors = load_file(f"{path}/model.safetensors")
    renamed = {k.removeprefix(prefix): v for k, v in tensors.items()}
    assert renamed.keys() != tensors.keys()
    save_file(renamed, str(tmp_path / "model.safetensors"))
    shutil.copy(f"{path}/config.json", tmp_path / "config.json")
    ids = _ids(2, (1, T))
    a = gm.load(str(tmp_path))[0](ids).hidden_states
    b = gm.load(path)[0](ids).hidden_states
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
