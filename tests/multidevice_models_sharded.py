"""Sharded loading on 8 simulated CPU devices; run by
tests/test_models_sharded.py::test_eight_simulated_devices with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (not collected itself)."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType

import geom_jax.models as gm
from geom_jax.models.loading import load_sharded_params, safetensors_dir

if jax.device_count() != 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8", allow_module_level=True)

IDS = np.random.default_rng(0).integers(0, 4000, (4, 24)).astype(np.int32)
MASK = (np.arange(24) < 20).astype(np.int32)[None].repeat(4, axis=0)


def _mesh(shape, n=None):
    devices = jax.devices()[: n or math.prod(shape)]
    return jax.make_mesh(shape, ("data", "model"), axis_types=(AxisType.Auto,) * 2, devices=devices)


def _flat(model):
    return dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def _assert_same_params(got, ref):
    g, r = _flat(got), _flat(ref)
    assert g.keys() == r.keys()
    for path in r:
        a, b = g[path].get_value(), r[path].get_value()
        assert a.dtype == b.dtype, path
        np.testing.assert_array_equal(
            np.asarray(a, np.float32), np.asarray(b, np.float32), err_msg=str(path)
        )


def _assert_same_forward(got, ref):
    a, b = got(IDS, MASK), ref(IDS, MASK)
    np.testing.assert_allclose(
        np.asarray(a.hidden_states), np.asarray(b.hidden_states), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(a.token_nll), np.asarray(b.token_nll), rtol=1e-5, atol=1e-5
    )


def _spec(model, *path):
    return tuple(_flat(model)[path].get_value().sharding.spec)


def _write_tiny_neox(path):
    """A random GPT-NeoX folder (fused query_key_value, biases), numpy only."""
    from safetensors.numpy import save_file

    V, D, H, hd, F, L = 512, 64, 8, 8, 128, 2
    rng = np.random.default_rng(1)
    w = lambda *shape: (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    t = {
        "gpt_neox.embed_in.weight": w(V, D),
        "embed_out.weight": w(V, D),
        "gpt_neox.final_layer_norm.weight": 1 + 0.1 * w(D),
        "gpt_neox.final_layer_norm.bias": 0.1 * w(D),
    }
    for i in range(L):
        p = f"gpt_neox.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[p + n + ".weight"], t[p + n + ".bias"] = 1 + 0.1 * w(D), 0.1 * w(D)
        t[p + "attention.query_key_value.weight"] = w(3 * H * hd, D)
        t[p + "attention.query_key_value.bias"] = 0.1 * w(3 * H * hd)
        t[p + "attention.dense.weight"], t[p + "attention.dense.bias"] = w(D, H * hd), 0.1 * w(D)
        t[p + "mlp.dense_h_to_4h.weight"], t[p + "mlp.dense_h_to_4h.bias"] = w(F, D), 0.1 * w(F)
        t[p + "mlp.dense_4h_to_h.weight"], t[p + "mlp.dense_4h_to_h.bias"] = w(D, F), 0.1 * w(D)
    os.makedirs(path)
    save_file(t, os.path.join(path, "model.safetensors"))
    config = dict(
        architectures=["GPTNeoXForCausalLM"],
        model_type="gpt_neox",
        vocab_size=V,
        hidden_size=D,
        intermediate_size=F,
        num_hidden_layers=L,
        num_attention_heads=H,
        max_position_embeddings=128,
        rotary_pct=0.25,
        use_parallel_residual=True,
        hidden_act="gelu",
        tie_word_embeddings=False,
    )
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return path


@pytest.fixture(scope="module")
def reference(tiny):
    return gm.load(tiny, tokenizer=False)[0]


@pytest.mark.parametrize("shape", [(8, 1), (4, 2), (2, 4)])
def test_sharded_load_equals_unsharded(tiny, reference, shape):
    mesh = _mesh(shape)
    model, _ = gm.load(tiny, tokenizer=False, mesh=mesh)
    _assert_same_params(model, reference)
    assert _spec(model, "embed") == ("model", None)
    assert _spec(model, "blocks", "wq") == (None, None, "model", None)
    assert _spec(model, "blocks", "w_down") == (None, "model", None)
    assert _spec(model, "blocks", "attn_norm_scale") in ((), (None, None))
    wq = _flat(model)[("blocks", "wq")].get_value()
    assert wq.addressable_shards[0].data.shape == (3, 64, 8 // shape[1], 8)
    _assert_same_forward(model, reference)


def test_fsdp_rules_shard_the_hidden_dimension_over_data(tiny, reference):
    model, _ = gm.load(tiny, tokenizer=False, mesh=_mesh((2, 4)), rules=gm.fsdp_rules())
    _assert_same_params(model, reference)
    assert _spec(model, "embed") == ("model", "data")
    assert _spec(model, "blocks", "wo") == (None, "model", None, "data")
    _assert_same_forward(model, reference)


def test_gpt_neox_fused_qkv_sharded(tmp_path):
    path = _write_tiny_neox(str(tmp_path / "neox"))
    ref, _ = gm.load(path, tokenizer=False)
    model, _ = gm.load(path, tokenizer=False, mesh=_mesh((2, 4)))
    _assert_same_params(model, ref)
    assert _spec(model, "blocks", "bk") == (None, "model", None)
    ids, mask = IDS % 512, MASK
    a, b = model(ids, mask), ref(ids, mask)
    np.testing.assert_allclose(
        np.asarray(a.hidden_states), np.asarray(b.hidden_states), rtol=1e-5, atol=1e-5
    )


def test_reads_only_the_boxes_of_its_shards(tiny, monkeypatch):
    """On (2, 4) every read of a 'model'-sharded tensor is a quarter of it,
    each quarter is read once (the 'data' replicas share it), and no tensor
    is read whole through `get`."""
    reads = []

    class Recorder:
        def __init__(self, view, name):
            self.view, self.name = view, name

        def get_shape(self):
            return self.view.get_shape()

        def __getitem__(self, box):
            out = self.view[box]
            reads.append((self.name, tuple(self.view.get_shape()), out.shape))
            return out

    original = safetensors_dir.SafetensorsDir.get_slice
    monkeypatch.setattr(
        safetensors_dir.SafetensorsDir,
        "get_slice",
        lambda self, name: Recorder(original(self, name), name),
    )
    monkeypatch.setattr(
        safetensors_dir.SafetensorsDir, "get", lambda self, name: pytest.fail(f"{name} read whole")
    )
    gm.load(tiny, tokenizer=False, mesh=_mesh((2, 4)))
    sharded = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "embed_tokens",
        "lm_head",
    )
    per_tensor = {}
    for name, full, got in reads:
        per_tensor[name] = per_tensor.get(name, 0) + 1
        if any(s in name for s in sharded):
            assert math.prod(got) * 4 == math.prod(full), (name, full, got)
        else:
            assert got == full, name
    assert per_tensor["model.layers.2.self_attn.q_proj.weight"] == 4
    assert per_tensor["model.norm.weight"] == 1
    assert len(per_tensor) == 3 * 9 + 3


def test_params_checkpoint_restores_into_another_mesh(tiny, reference, tmp_path, monkeypatch):
    folder = str(tmp_path / "params")
    saved, _ = gm.load(tiny, tokenizer=False, mesh=_mesh((4, 2)), params_checkpoint=folder)
    with open(os.path.join(folder, "geom_jax_params.json")) as f:
        assert json.load(f)["checkpoint_id"] == reference.config.checkpoint_id

    def no_read(*a, **k):
        raise AssertionError("the source weights were read")

    monkeypatch.setattr(safetensors_dir.SafetensorsDir, "get", no_read)
    monkeypatch.setattr(safetensors_dir.SafetensorsDir, "get_slice", no_read)
    restored, _ = gm.load(tiny, tokenizer=False, mesh=_mesh((2, 4)), params_checkpoint=folder)
    _assert_same_params(restored, reference)
    assert _spec(restored, "blocks", "wq") == (None, None, "model", None)
    wq = _flat(restored)[("blocks", "wq")].get_value()
    assert wq.sharding.mesh.shape == {"data": 2, "model": 4}
    _assert_same_forward(restored, reference)
    unsharded, _ = gm.load(tiny, tokenizer=False, params_checkpoint=folder)
    _assert_same_params(unsharded, reference)
    assert len(_flat(unsharded)[("embed",)].get_value().devices()) == 1


def test_mesh_refused_before_any_weight_is_read(tiny, monkeypatch):
    monkeypatch.setattr(safetensors_dir.SafetensorsDir, "get_slice", lambda *a: pytest.fail("read"))
    with pytest.raises(gm.MeshMismatchError) as e:
        gm.load(tiny, tokenizer=False, mesh=_mesh((2, 3)))
    assert (
        "num_heads=8 is not divisible by the 'model' mesh axis of size 3 (mesh shape (2, 3))"
        in str(e.value)
    )


class WholeTensors:
    """A source without `get_slice`, like GGUF (dequantised per tensor)."""

    def __init__(self, source):
        self.source = source

    def __contains__(self, name):
        return name in self.source

    def get(self, name):
        return self.source.get(name)


def test_source_without_slices_is_sharded_from_host_copies(tiny, reference):
    cfg = reference.config
    mesh = _mesh((2, 4))
    params = load_sharded_params(
        cfg,
        WholeTensors(safetensors_dir.SafetensorsDir(tiny)),
        jnp.float32,
        gm.param_shardings(cfg, mesh),
    )
    model = gm.with_params(cfg, params)
    _assert_same_params(model, reference)
    assert _spec(model, "blocks", "wk") == (None, None, "model", None)
    _assert_same_forward(model, reference)
