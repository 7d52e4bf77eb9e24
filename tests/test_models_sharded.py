"""Sharded loading (issue 5, part 2): slice mapping of every layout, mesh
refusal before any weight is read, converted-parameter checkpoints. The
multi-device checks run in tests/multidevice_models_sharded.py, launched
here in a subprocess with 8 simulated CPU devices."""

import itertools
import json
import os
import subprocess
import sys
from xml.etree import ElementTree

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import subprocess_env
from helpers.tiny_model import write_tiny_llama
from jax.sharding import AbstractMesh, AxisType

import geom_jax.models as gm
from geom_jax.models.loading import gguf_file, params_checkpoint, safetensors_dir
from geom_jax.models.loading import layout as lay

HERE = os.path.dirname(os.path.abspath(__file__))


def _ranges(n):
    return [slice(a, b) for a in range(n) for b in range(a + 1, n + 1)] + [slice(None)]


@pytest.mark.parametrize(
    "layout,shape",
    [
        (lay.in_out(4, 3), (12, 5)),
        (lay.in_out(6), (6, 5)),
        (lay.heads_to_embed(4, 3), (5, 12)),
        (lay.reshape(4, 3), (12,)),
        (lay.neox_qkv(1, 4, 3), (36, 5)),
        (lay.neox_qkv_bias(2, 4, 3), (36,)),
        (lay.SAME, (5, 6)),
    ],
)
def test_layout_reads_exactly_the_shard(layout, shape):
    w = np.random.default_rng(0).standard_normal(shape)
    full = layout(w)
    for index in itertools.product(*[_ranges(n)[::3] for n in full.shape]):
        np.testing.assert_array_equal(layout.read(w, shape, index), full[index])


def test_layout_reads_only_the_heads_it_needs():
    box, _ = lay.in_out(8, 4).window((32, 16), (slice(None), slice(2, 4), slice(None)))
    assert box == (slice(8, 16), slice(0, 16))
    box, _ = lay.neox_qkv(2, 8, 4).window((96, 16), (slice(None), slice(6, 8), slice(None)))
    assert box == (slice(72, 96), slice(0, 16))


def test_check_mesh_names_both_numbers(tiny):
    cfg = gm.load(tiny, tokenizer=False)[0].config
    with pytest.raises(gm.MeshMismatchError) as e:
        gm.check_mesh(cfg, AbstractMesh((1, 3), ("data", "model")))
    msg = str(e.value)
    assert (
        "num_heads=8 is not divisible by the 'model' mesh axis of size 3 (mesh shape (1, 3))" in msg
    )
    assert "num_kv_heads=4" in msg and "intermediate_size=128" in msg
    assert "vocab_size" not in msg  # 49152 = 3 * 16384
    gm.check_mesh(cfg, AbstractMesh((3, 1), ("data", "model")))
    with pytest.raises(
        ValueError, match=r"hidden_size=64 is not divisible by the 'data' mesh axis of size 3"
    ):
        gm.check_mesh(cfg, AbstractMesh((3, 1), ("data", "model")), gm.fsdp_rules())
    with pytest.raises(ValueError, match="does not have"):
        gm.check_mesh(cfg, AbstractMesh((8,), ("data",)))
    explicit = AbstractMesh((1, 1), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    with pytest.raises(ValueError, match=r"AxisType.Auto"):
        gm.check_mesh(cfg, explicit)


def test_smollm2_refused_before_any_weight_is_read(monkeypatch):
    smol = gm.presets.get("smollm2-135m")
    for shape in [(1, 2), (2, 4)]:
        with pytest.raises(gm.MeshMismatchError) as e:
            gm.check_mesh(smol, AbstractMesh(shape, ("data", "model")))
        assert (
            f"num_kv_heads=3 is not divisible by the 'model' mesh axis of size {shape[1]} "
            f"(mesh shape {shape})"
        ) in str(e.value)

    def no_read(*a, **k):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(gguf_file.GGUFFile, "get", no_read)
    monkeypatch.setattr(gguf_file.GGUFFile, "sha256", no_read)
    with pytest.raises(
        gm.MeshMismatchError,
        match=r"num_heads=9 is not divisible by the "
        r"'model' mesh axis of size 2 \(mesh shape \(1, 2\)\)",
    ):
        gm.load("smollm2-135m", mesh=AbstractMesh((1, 2), ("data", "model")), tokenizer=False)


def _no_weight_reads(monkeypatch):
    def no_read(*a, **k):
        raise AssertionError("the source weights were read")

    monkeypatch.setattr(safetensors_dir.SafetensorsDir, "get", no_read)
    monkeypatch.setattr(safetensors_dir.SafetensorsDir, "get_slice", no_read)


def _params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_params_checkpoint_round_trip(tiny, tmp_path, monkeypatch):
    folder = str(tmp_path / "params")
    first, _ = gm.load(tiny, tokenizer=False, param_dtype=jnp.bfloat16, params_checkpoint=folder)
    with open(os.path.join(folder, params_checkpoint.RECORD)) as f:
        record = json.load(f)
    assert record["checkpoint_id"] == first.config.checkpoint_id
    assert record["param_dtype"] == "bfloat16" and record["config"]["num_heads"] == 8
    _no_weight_reads(monkeypatch)
    again, _ = gm.load(tiny, tokenizer=False, param_dtype=jnp.bfloat16, params_checkpoint=folder)
    assert again.config == first.config
    for a, b in zip(jax.tree.leaves(_params(first)), jax.tree.leaves(_params(again)), strict=True):
        assert b.dtype == jnp.bfloat16 and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    ids = np.arange(1, 17, dtype=np.int32)[None]
    np.testing.assert_array_equal(
        np.asarray(first(ids).hidden_states), np.asarray(again(ids).hidden_states)
    )


def test_params_checkpoint_refuses_another_model(tiny, tmp_path):
    folder = str(tmp_path / "params")
    gm.load(tiny, tokenizer=False, params_checkpoint=folder)
    with pytest.raises(
        gm.ParamsCheckpointMismatchError, match=r"param_dtype 'float32' \(this load: 'bfloat16'\)"
    ):
        gm.load(tiny, tokenizer=False, param_dtype=jnp.bfloat16, params_checkpoint=folder)
    other = write_tiny_llama(str(tmp_path / "other"), seed=1, num_hidden_layers=2)
    with pytest.raises(gm.ParamsCheckpointMismatchError) as e:
        gm.load(other, tokenizer=False, params_checkpoint=folder)
    assert "checkpoint_id" in str(e.value) and "config.num_layers 3 (this load: 2)" in str(e.value)


def test_eight_simulated_devices(tmp_path):
    """tests/multidevice_models_sharded.py on meshes (8, 1), (4, 2), (2, 4)."""
    env = subprocess_env.cpu_env("--xla_force_host_platform_device_count=8")
    suite = os.path.join(HERE, "multidevice_models_sharded.py")
    report = tmp_path / "junit.xml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--durations=0",
            f"--junitxml={report}",
            suite,
        ],
        cwd=os.path.dirname(HERE),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    # A suite that skipped (e.g. fewer than 8 devices) also exits 0: count what ran.
    counts = ElementTree.parse(report).getroot().find("testsuite").attrib
    ran = int(counts["tests"]) - int(counts["skipped"])
    assert int(counts["skipped"]) == 0 and ran >= 7, counts
