"""The families added in issue 11 against Hugging Face PyTorch (CPU, float32,
eager attention) on small random checkpoints written with
save_pretrained(safe_serialization=True) and read back through
geom_jax.models.load: every hidden state within 1e-4 of the layer's max,
token NLL within 1e-4, loss within 1e-5 relative; a right-padded batch equals
each prompt alone."""

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from models_helpers import hf_reference, layer_rel_err, randomize_  # noqa: E402

import geom_jax.models as gm  # noqa: E402

V = 211
SMALL = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3)
T = 37  # several attention blocks of 8, plus a ragged last block
EAGER = dict(attn_implementation="eager")

CONFIGS = {
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

FAMILY_OF_CASE = {name: name.split("_")[0] for name in CONFIGS}


def _save(config, path, seed):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model = randomize_(model.eval(), seed)
    model.save_pretrained(path, safe_serialization=True)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for i, (name, make) in enumerate(CONFIGS.items()):
        path = str(root / name)
        out[name] = (path, _save(make(), path, seed=10 + i))
    return out


def _ids(seed, shape):
    return np.random.default_rng(seed).integers(0, V, shape).astype(np.int32)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_hf(checkpoints, name):
    path, hf = checkpoints[name]
    model, tok = gm.load(path, attn_block=8)
    assert tok is None and model.config.family == FAMILY_OF_CASE[name]
    ids = _ids(1, (2, T))
    out = model(ids, return_logits=True)
    hs, nll, loss, logits = hf_reference(hf, ids)
    assert out.hidden_states.shape == hs.shape
    err = layer_rel_err(out.hidden_states, hs)
    assert err.max() < 1e-4, err
    np.testing.assert_allclose(np.asarray(out.token_nll), nll, atol=1e-4, rtol=0)
    assert abs(float(out.loss) - loss) <= 1e-5 * abs(loss)
    np.testing.assert_allclose(np.asarray(out.logits), logits, atol=1e-4 * np.abs(logits).max())


PADDED = ["qwen2_gqa_untied", "qwen3_gqa_untied", "gemma2_tied", "gemma3_tied"]
PADDED += ["olmo2_gqa_untied", "phi3_gqa_window", "gpt2_tied", "opt_tied"]


@pytest.mark.parametrize("name", PADDED)
def test_right_padded_batch_equals_each_prompt_alone(checkpoints, name):
    path, hf = checkpoints[name]
    model, _ = gm.load(path, attn_block=8)
    lengths = [T, 13]
    ids = _ids(5, (len(lengths), T))
    mask = (np.arange(T)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids = np.where(mask > 0, ids, 0).astype(np.int32)
    batch = model(ids, mask)
    hs_b, nll_b = np.asarray(batch.hidden_states), np.asarray(batch.token_nll)
    assert np.isfinite(hs_b).all()
    for b, n in enumerate(lengths):
        alone = model(ids[b : b + 1, :n])
        # relative to each layer's max: Gemma's scaled embeddings are ~10x larger
        assert layer_rel_err(hs_b[:, b, :n], np.asarray(alone.hidden_states)[:, 0]).max() < 1e-5
        np.testing.assert_allclose(
            nll_b[b, : n - 1], np.asarray(alone.token_nll)[0], atol=2e-5, rtol=0
        )
        assert (nll_b[b, n - 1 :] == 0).all()
    hs, nll, _, _ = hf_reference(hf, ids, mask)
    for b, n in enumerate(lengths):
        assert layer_rel_err(hs_b[:, b, :n], hs[:, b, :n]).max() < 1e-4
        np.testing.assert_allclose(nll_b[b, : n - 1], nll[b, : n - 1], atol=1e-4)


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
