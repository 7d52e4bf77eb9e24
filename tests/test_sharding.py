"""Sweeps on 8 simulated CPU devices and on two processes equal the 1-device run."""

import json
import os
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_helpers, subprocess_env, tolerances

from geom_jax import models, sharding
from geom_jax import run as geom_run
from geom_jax.run import plan, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "token_geometry.py")
COMMON = dict(
    method="shuffled",
    max_tokens=32,
    max_shuffle=2,
    num_prompts=5,
    batch_size=2,
    range_max=16,
    max_k=8,
)
"""The runs compared here: 15 rows (5 prompts x 3 levels) of 32 tokens, so that their
steps take the XLA selection path that the suite's compilation cache holds (the
two-process launches load what an earlier launch of the same shapes compiled). The
meshes of 8 devices take batches of 8 (MESH_COMMON)."""
MESH_COMMON = dict(COMMON, batch_size=8)


def _flags(model, out, **kw):
    args = {**COMMON, **kw, "model": model, "output_dir": str(out)}
    return [f"--{k}={v}" for k, v in args.items()] + ["--noprogress"]


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """The one-device run, and the overlap's tolerance on its clouds (the model's hidden
    states of layers 1..L at each row's valid tokens)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    spec = geom_run.RunSpec(output_dir=str(out), model=tiny, progress=False, **COMMON)
    got = geom_run.run(spec)
    _, selection = runner.select(spec, models.load_tokenizer(tiny))
    rows, _ = plan.build_plan(spec, selection)
    ids, valid = rows.make_batch(np.arange(len(got["prompt_index"])))
    model, _ = models.load(tiny)
    clouds = np.moveaxis(np.asarray(model(jnp.asarray(ids)).hidden_states)[1:], 0, 1)
    valid = valid.astype(bool)
    # Another mesh reorders the forward's float32 sums, so the points themselves move:
    # the runs' distances agree within DISTANCE_RTOL (the gride_scales bound below), which
    # widens the window of neighbours that may swap (tests/helpers/tolerances.py).
    atol = tolerances.overlap_atol(clouds, valid, COMMON["max_k"], DISTANCE_RTOL)
    return {**got, "overlap_atol": atol}


DISTANCE_RTOL = 1e-4


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _assert_equal_runs(got, ref):
    np.testing.assert_array_equal(got["prompt_index"], ref["prompt_index"])
    np.testing.assert_array_equal(got["shuffle_index"], ref["shuffle_index"])
    for k in ["gride_ids", "twonn", "cos_mean", "cos_std", "loss"]:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(got["gride_scales"], ref["gride_scales"], rtol=DISTANCE_RTOL)
    np.testing.assert_allclose(got["token_nll"], ref["token_nll"], rtol=1e-4, atol=1e-5)
    tolerances.assert_rank_field(
        got["overlap"], ref["overlap"], "overlap", ref["overlap_atol"], "another mesh: "
    )


MESH_SCRIPT = r"""
import json, os, sys
from flax import nnx
from geom_jax import pipeline
from geom_jax import run as geom_run
from geom_jax.run import flags
model, root = sys.argv[1], sys.argv[2]
common = json.loads(sys.argv[3])
report = {}
placed = pipeline.GeometryPipeline.__init__
def record_placement(self, *args, **kwargs):
    placed(self, *args, **kwargs)
    report["w_gate spec"] = list(nnx.to_pure_dict(self.state)["blocks"]["w_gate"].sharding.spec)
pipeline.GeometryPipeline.__init__ = record_placement
for shape, fsdp in [("8,1", False), ("4,2", False), ("2,4", True)]:
    key = shape + (" fsdp" if fsdp else "")
    out = os.path.join(root, key.replace(",", "x").replace(" ", "_"))
    geom_run.run(geom_run.RunSpec(output_dir=out, model=model, mesh_shape=shape, fsdp=fsdp,
                                      progress=False, **common))
    report[key] = out
    report["w_gate " + key] = report.pop("w_gate spec")
for shape, name in [("2,4", "smollm2-135m"), ("4,4", model), ("8,1", model)]:
    kw = dict(common, batch_size=4) if shape == "8,1" else common
    try:
        geom_run.run(geom_run.RunSpec(output_dir=os.path.join(root, "bad" + shape[0]),
                                          model=name, mesh_shape=shape, progress=False, **kw))
        report["error " + shape] = None
    except geom_run.UserError as e:
        report["error " + shape] = flags.message(e)
print("REPORT " + json.dumps(report))
"""


def test_meshes_on_eight_devices_equal_one_device(tiny, reference, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", MESH_SCRIPT, tiny, str(tmp_path), json.dumps(MESH_COMMON)],
        env=_env(XLA_FLAGS=subprocess_env.xla_flags("--xla_force_host_platform_device_count=8")),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    for key in ["8,1", "4,2", "2,4 fsdp"]:
        got = dict(np.load(os.path.join(report[key], "results.npz")))
        meta = json.load(open(os.path.join(report[key], "metadata.json")))
        shape = [int(x) for x in key.split()[0].split(",")]
        assert meta["mesh_shape"] == shape and meta["num_devices"] == 8
        _assert_equal_runs(got, reference)
    # the pipeline keeps the loader's placement: --fsdp also shards the hidden dimension
    assert report["w_gate 4,2"] == [None, None, "model"]
    assert report["w_gate 2,4 fsdp"] == [None, "data", "model"]
    assert (
        "num_heads=9 is not divisible by the 'model' mesh axis of size 4" in report["error 2,4"]
        or "num_kv_heads=3 is not divisible by the 'model' mesh axis of size 4"
        in report["error 2,4"]
    )
    assert "--mesh_shape=4,4 needs 16 devices, but 8 are available" in report["error 4,4"]
    assert (
        "--batch_size=4 is not divisible by the 'data' mesh axis of size 8" in report["error 8,1"]
    )


def test_parse_mesh_shape():
    assert sharding.parse_mesh_shape("4,2") == (4, 2)
    assert sharding.parse_mesh_shape("2x4") == (2, 4)
    assert sharding.parse_mesh_shape("") is None
    with pytest.raises(ValueError, match="is not two integers"):
        sharding.parse_mesh_shape("a,b")
    with pytest.raises(ValueError, match="two positive integers"):
        sharding.parse_mesh_shape("8")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tiny, out, port, extra=()):
    procs = []
    for pid in range(2):
        args = _flags(tiny, out) + [
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={pid}",
            *extra,
        ]
        procs.append(
            subprocess.Popen(
                [sys.executable, SCRIPT, *args],
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def _finish(procs, timeout=600):
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-5000:]
    return logs


def test_two_processes_kill_one_then_resume_both(tiny, reference, tmp_path):
    """Two processes split the rows (one per batch each), one is killed with SIGKILL after
    the second checkpoint, and both resumed finish the run: the merged results equal the
    one-device run's. (The resumed launch is itself a two-process split and merge, so this
    test also holds what the former uninterrupted test_two_processes_split_and_merge
    checked: the results, the checkpoints folder, num_processes in metadata.json.)"""
    out = tmp_path / "run"
    extra = ["--checkpoint_every=1"]  # 8 batches of 2 rows, one per process
    procs = _launch(tiny, out, _free_port(), extra)
    ckpt = out / "checkpoints"

    def second_checkpoint():
        steps = [int(d) for d in os.listdir(ckpt) if d.isdigit()] if ckpt.is_dir() else []
        return bool(steps) and max(steps) >= 2

    run_helpers.wait_while_running(second_checkpoint, procs)
    run_helpers.kill_second_then_first(procs)
    assert not (out / "results.npz").exists()
    logs = _finish(_launch(tiny, out, _free_port(), extra + ["--resume"]))
    assert any("Resumed from checkpoint" in log for log in logs)
    got = dict(np.load(out / "results.npz"))
    _assert_equal_runs(got, reference)
    assert any(d.isdigit() for d in os.listdir(out / "checkpoints"))
    assert json.load(open(out / "metadata.json"))["num_processes"] == 2
