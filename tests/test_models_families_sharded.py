"""A new family on 8 simulated devices (acceptance 6): a tiny Qwen3 (QK-norm,
head_dim != hidden / heads, GQA) run through the experiment with
--mesh_shape=4,2 and --fsdp equals the one-device run, and a mesh that does
not divide it is refused naming both numbers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import subprocess_env
from helpers.tiny_model import write_tiny_llama

COMMON = dict(
    method="shuffled",
    max_tokens=32,
    max_shuffle=1,
    num_prompts=4,
    batch_size=8,
    range_max=16,
    max_k=8,
)


def write_tiny_qwen3(path: str) -> str:
    """write_tiny_llama's tensors plus Qwen3's q_norm / k_norm, as Qwen3."""
    from safetensors.numpy import load_file, save_file

    write_tiny_llama(path, seed=4, head_dim=16, num_hidden_layers=2)
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    rng = np.random.default_rng(5)
    for i in range(2):
        for n in ("q_norm", "k_norm"):
            tensors[f"model.layers.{i}.self_attn.{n}.weight"] = (
                1 + 0.2 * rng.standard_normal(16)
            ).astype(np.float32)
    save_file(tensors, file)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config.update(architectures=["Qwen3ForCausalLM"], model_type="qwen3", attention_bias=False)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return path


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    return write_tiny_qwen3(str(tmp_path_factory.mktemp("qwen3") / "tiny-qwen3"))


@pytest.fixture(scope="module")
def reference(qwen3, tmp_path_factory):
    from geom_jax import run as geom_run

    out = tmp_path_factory.mktemp("ref") / "run"
    return geom_run.run(
        geom_run.RunSpec(output_dir=str(out), model=qwen3, progress=False, **COMMON)
    )


def _hf_checkpoints(root):
    """Tiny HF checkpoints of the families with their own layouts (Phi-3's
    fused rows, GPT-2's Conv1D, OPT's positions, Gemma 3's local layers),
    sized to divide a (4, 2) mesh with --fsdp."""
    transformers = pytest.importorskip("transformers")
    from helpers.models_helpers import save_random_hf

    common = dict(vocab_size=256, attn_implementation="eager")
    configs = {
        "phi3": transformers.Phi3Config(
            **common,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            pad_token_id=0,
        ),
        "gemma3": transformers.Gemma3TextConfig(
            **common,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=5,
            layer_types=["sliding_attention", "full_attention"],
        ),
        "gpt2": transformers.GPT2Config(
            **common, n_embd=64, n_layer=2, n_head=4, n_positions=32, tie_word_embeddings=False
        ),
        "opt": transformers.OPTConfig(
            **common,
            hidden_size=64,
            ffn_dim=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
            word_embed_proj_dim=64,
        ),
    }
    out = {}
    for i, (name, config) in enumerate(configs.items()):
        out[name] = str(root / name)
        save_random_hf(config, out[name], seed=i)
    return out


SCRIPT = r"""
import json, os, sys
import numpy as np
from flax import nnx
from geom_jax import models, pipeline, sharding
from geom_jax import run as geom_run
model, root, common = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
report = {"sharded_load": {}}
mesh = sharding.make_mesh((4, 2))
ids = np.random.default_rng(0).integers(0, 256, (4, 20)).astype(np.int32)
mask = (np.arange(20) < np.array([[20], [13], [20], [7]])).astype(np.int32)
for name, path in json.loads(sys.argv[4]).items():
    ref, _ = models.load(path, tokenizer=False)
    got, _ = models.load(path, tokenizer=False, mesh=mesh, rules=models.fsdp_rules())
    a, b = got(ids, mask), ref(ids, mask)
    ha, hb = np.asarray(a.hidden_states), np.asarray(b.hidden_states)
    wk = nnx.to_pure_dict(nnx.state(got, nnx.Param))["blocks"]["wk"]
    report["sharded_load"][name] = dict(
        hidden=float(np.max(np.abs(ha - hb)) / np.max(np.abs(hb))),
        nll=float(np.max(np.abs(np.asarray(a.token_nll) - np.asarray(b.token_nll)))),
        wk=list(wk.sharding.spec),
    )
placed = pipeline.GeometryPipeline.__init__
def record(self, *args, **kwargs):
    placed(self, *args, **kwargs)
    blocks = nnx.to_pure_dict(self.state)["blocks"]
    report["specs"] = {k: list(blocks[k].sharding.spec) for k in ("wq", "q_norm_scale")}
pipeline.GeometryPipeline.__init__ = record
out = os.path.join(root, "4x2_fsdp")
geom_run.run(geom_run.RunSpec(output_dir=out, model=model, mesh_shape="4,2", fsdp=True,
                                  progress=False, **common))
report["family"] = models.load(model, tokenizer=False)[0].config.family
try:
    geom_run.run(geom_run.RunSpec(output_dir=os.path.join(root, "bad"), model=model,
                                      mesh_shape="1,8", progress=False, **common))
except geom_run.UserError as e:
    report["error"] = str(e)
print("REPORT " + json.dumps(report))
"""


def test_qwen3_on_a_4x2_fsdp_mesh_equals_one_device(qwen3, reference, tmp_path):
    """Also: Phi-3, Gemma 3, GPT-2 and OPT checkpoints loaded shard by shard
    onto the same mesh equal their unsharded loads."""
    env = subprocess_env.cpu_env("--xla_force_host_platform_device_count=8")
    others = _hf_checkpoints(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            qwen3,
            str(tmp_path),
            json.dumps(COMMON),
            json.dumps(others),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    assert report["family"] == "qwen3"
    # the pipeline keeps the loader's placement: --fsdp shards the hidden dimension over data
    assert report["specs"] == {"wq": [None, "data", "model", None], "q_norm_scale": [None, None]}
    got = dict(np.load(os.path.join(tmp_path, "4x2_fsdp", "results.npz")))
    meta = json.load(open(os.path.join(tmp_path, "4x2_fsdp", "metadata.json")))
    assert meta["mesh_shape"] == [4, 2] and meta["num_devices"] == 8
    assert meta["model_config"]["qk_norm"] == "head"
    np.testing.assert_array_equal(got["prompt_index"], reference["prompt_index"])
    np.testing.assert_array_equal(got["shuffle_index"], reference["shuffle_index"])
    for k in ["gride_ids", "twonn", "cos_mean", "cos_std", "loss"]:
        np.testing.assert_allclose(got[k], reference[k], rtol=1e-4, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(got["token_nll"], reference["token_nll"], rtol=1e-4, atol=1e-5)
    assert "num_kv_heads=4 is not divisible by the 'model' mesh axis of size 8" in report["error"]
    assert set(report["sharded_load"]) == set(others)
    for name, r in report["sharded_load"].items():
        assert r["hidden"] < 1e-5 and r["nll"] < 1e-5, (name, r)
        assert r["wk"] == [None, "data", "model", None], (name, r)
