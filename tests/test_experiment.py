"""token_geometry end to end on a tiny checkpoint: fused = separate, resume, bad input."""

import functools
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_helpers

from geom_jax import data, metrics, models, results
from geom_jax import run as geom_run
from geom_jax.io import files

ROOT, SCRIPT = run_helpers.ROOT, run_helpers.SCRIPT
_spec = functools.partial(
    run_helpers.small_spec, method="shuffled", max_shuffle=2, num_prompts=3, batch_size=2
)


def _separately(model_dir, spec, row_prompt_index, row_shuffle):
    """The same rows through the model and layer_geometry called one by one."""
    model, tok = models.load(model_dir)
    sel = data.select_prompts(
        data.open_source(spec.dataset),
        [tok],
        max_tokens=spec.max_tokens,
        num_prompts=spec.num_prompts,
    )
    out = {
        k: [] for k in ["gride_ids", "twonn", "overlap", "cos_mean", "cos_std", "loss", "token_nll"]
    }
    for p, s in zip(row_prompt_index, row_shuffle):
        ids = sel.token_ids[list(sel.indices).index(p)]
        ids = data.shuffle_tokens(ids, int(s), seed=spec.seed, prompt_index=int(p))[None]
        fwd = model(jnp.asarray(ids))
        hidden = np.asarray(fwd.hidden_states)[:, 0]  # [L+1, T, D]
        geo = metrics.layer_geometry(hidden[1:], range_max=spec.range_max, max_k=spec.max_k)
        cos_mean, cos_std = metrics.cosine_similarity_stats(hidden)
        out["gride_ids"].append(np.asarray(geo.gride_ids))
        out["twonn"].append(np.asarray(geo.twonn))
        out["overlap"].append(np.asarray(geo.overlap))
        out["cos_mean"].append(np.asarray(cos_mean))
        out["cos_std"].append(np.asarray(cos_std))
        out["loss"].append(float(fwd.loss))
        out["token_nll"].append(np.asarray(fwd.token_nll)[0])
    return {k: np.asarray(v) for k, v in out.items()}


def test_fused_run_equals_model_and_metrics_called_separately(tiny, tmp_path):
    spec = _spec(tiny, tmp_path / "run")
    start = time.time()
    got = geom_run.run(spec)
    elapsed = time.time() - start
    assert got["gride_ids"].shape == (9, 3, 4)  # 3 prompts x 3 levels, L = 3 layers, S = log2(16)
    assert got["overlap"].shape == (9, 2, 8) and got["cos_mean"].shape == (9, 4)
    assert got["token_nll"].shape == (9, 31)  # 32 tokens, 31 next-token targets
    np.testing.assert_array_equal(got["shuffle_index"], np.tile([0, 1, 2], 3))
    ref = _separately(tiny, spec, got["prompt_index"], got["shuffle_index"])
    for k in ["gride_ids", "twonn", "cos_mean", "cos_std", "loss", "token_nll"]:
        np.testing.assert_allclose(got[k], ref[k], rtol=2e-5, atol=1e-6, err_msg=k)
    np.testing.assert_array_equal(got["overlap"], ref["overlap"])
    on_disk = np.load(os.path.join(spec.output_dir, "results.npz"))
    assert set(on_disk.files) == set(got) and set(on_disk.files) <= set(results.field_docs())
    meta = files.read_json(os.path.join(spec.output_dir, "metadata.json"))
    assert meta["flags"]["method"] == "shuffled" and "sha256" in meta["checkpoint"]
    assert meta["versions"]["jax"]
    # The recorded times are this run's, rounded to 0.01 s: compute within wall, wall
    # within the call and covering most of it (the call adds only the metadata write).
    assert 0 < meta["compute_time_s"] <= meta["wall_time_s"] <= elapsed + 0.01
    assert meta["wall_time_s"] >= 0.8 * elapsed - 0.01
    # Same flags, same seed: identical results.
    again = geom_run.run(_spec(tiny, tmp_path / "run2"))
    for k in got:
        np.testing.assert_array_equal(got[k], again[k], err_msg=k)


def test_smollm2_fused_equals_separate(tmp_path):
    spec = _spec(
        "smollm2-135m",
        tmp_path / "run",
        method="structured",
        max_tokens=128,
        num_prompts=1,
        batch_size=1,
        range_max=64,
        max_k=16,
    )
    got = geom_run.run(spec)
    ref = _separately("smollm2-135m", spec, got["prompt_index"], got["shuffle_index"])
    for k in ["gride_ids", "twonn", "cos_mean", "cos_std", "loss"]:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, err_msg=k)
    np.testing.assert_array_equal(got["overlap"], ref["overlap"])


def test_existing_output_dir_is_not_overwritten(tiny, tmp_path):
    out = tmp_path / "run"
    geom_run.run(_spec(tiny, out, num_prompts=1, method="structured"))
    before = (out / "results.npz").read_bytes()
    with run_helpers.raises_user_error("already holds files; pass --resume"):
        geom_run.run(_spec(tiny, out, num_prompts=1, method="structured"))
    with run_helpers.raises_user_error(
        r"--resume: the run in .* used other settings --num_prompts=1 \(now 2\)",
    ):
        geom_run.run(_spec(tiny, out, num_prompts=2, method="structured", resume=True))
    assert (out / "results.npz").read_bytes() == before


def test_recorded_process_count_is_the_runtimes(tiny, tmp_path):
    """The run config holds jax.process_count() (the --num_processes flag is
    unset when jax.distributed starts from SLURM or a TPU pod), so resuming
    under another process count is refused."""
    out = tmp_path / "run"
    spec = _spec(tiny, out, num_prompts=1, method="structured")
    geom_run.run(spec)
    path = out / results.RUN_CONFIG_FILE
    saved = files.read_json(str(path))
    assert saved["num_processes"] == 1
    files.write_json(str(path), dict(saved, num_processes=2))
    with run_helpers.raises_user_error(r"--num_processes=2 \(now 1\)"):
        geom_run.run(spec.replace(resume=True))


def _cli(args, **kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, SCRIPT, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_sigkill_then_resume_equals_uninterrupted(tiny, tmp_path, caplog):
    """The command line killed with SIGKILL after its third checkpoint (of 18 batches),
    then resumed (the same settings as a RunSpec, in this process): the rows equal an
    uninterrupted run's. The uninterrupted run goes first, so the command line loads its
    compiled steps from the suite's cache (same shapes and options)."""
    import logging

    full = geom_run.run(_spec(tiny, tmp_path / "full", num_prompts=6, batch_size=1))
    args = [
        f"--model={tiny}",
        "--method=shuffled",
        "--max_tokens=32",
        "--max_shuffle=2",
        "--num_prompts=6",
        "--batch_size=1",
        "--range_max=16",
        "--max_k=8",
        "--checkpoint_every=1",
        "--noprogress",
    ]
    killed = tmp_path / "killed"
    proc = _cli(args + [f"--output_dir={killed}"])
    ckpt = killed / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline:
        steps = [d for d in os.listdir(ckpt) if d.isdigit()] if ckpt.is_dir() else []
        if len(steps) >= 1 and max(map(int, steps)) >= 3:
            break
        if proc.poll() is not None:
            pytest.fail("run ended before it could be killed:\n" + proc.stdout.read())
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.npz").exists(), "the run was not killed mid-way"
    spec = _spec(tiny, killed, num_prompts=6, batch_size=1, checkpoint_every=1, resume=True)
    with caplog.at_level(logging.INFO):
        geom_run.run(spec)
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "Resumed from checkpoint" in log and "of 18 rows done" in log, log
    got = np.load(killed / "results.npz")
    assert (
        len(got["prompt_index"]) == 18
        and np.unique(got["prompt_index"] * 10 + got["shuffle_index"]).size == 18
    )
    for k in full:
        np.testing.assert_array_equal(got[k], full[k], err_msg=k)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(model="no-such-model"), "unknown model 'no-such-model'"),
        (dict(model="/nonexistent/dir/model"), "no such file or directory"),
        (dict(dataset="nonsense"), "unknown dataset 'nonsense'"),
        (
            dict(num_prompts=500, method="structured"),
            r"--num_prompts=500: only \d+ of the 79 prompts",
        ),
        (dict(max_tokens=72), r"--max_tokens=72 is not divisible by 4\*\*max_shuffle = 16"),
        (dict(text_field=""), "--text_field must not be empty"),
        (dict(max_tokens=16, max_shuffle=1), r"range_max=16 with N = 16 points"),
        (dict(batch_size=0), "--batch_size must be positive"),
    ],
)
def test_bad_input_fails_before_compute(tiny, tmp_path, overrides, message):
    out = tmp_path / "run"
    spec = _spec(overrides.pop("model", tiny), out, **overrides)
    with run_helpers.raises_user_error(message):
        geom_run.run(spec)
    assert not (out / "checkpoints").exists()


def test_empty_text_field_in_records(tiny, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "hello"}\n{"body": "no text"}\n')
    with run_helpers.raises_user_error("--text_field: record .* has no field 'text'"):
        geom_run.run(_spec(tiny, tmp_path / "run", dataset=str(path)))


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_output_dir(tiny, tmp_path, where):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "run" if where == "under_a_file" else "/proc/geom_jax_run"
    with run_helpers.raises_user_error("is not writable"):
        geom_run.run(_spec(tiny, out))


def test_failed_validation_leaves_folder_reusable(tiny, tmp_path):
    out = tmp_path / "run"
    with run_helpers.raises_user_error("--num_prompts=500"):
        geom_run.run(_spec(tiny, out, num_prompts=500, method="structured"))
    assert not os.listdir(out)
    geom_run.run(_spec(tiny, out, num_prompts=1, method="structured"))
    assert (out / "results.npz").is_file()


def test_cli_reports_errors_without_traceback(tiny, tmp_path):
    proc = _cli(
        [
            f"--model={tiny}",
            "--method=shuffled",
            "--max_tokens=100",
            f"--output_dir={tmp_path / 'x'}",
        ]
    )
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2
    assert "error: --method=shuffled: --max_tokens=100 is not divisible" in out
    assert "Traceback" not in out


def test_cli_default_range_max_and_quiet_startup(tiny, tmp_path):
    """No --range_max: the largest range 64 tokens support (63, S = 5) is used and
    recorded; neither XLA's TPU probe nor transformers' "PyTorch was not found"
    reaches the terminal; torch, installed here, is never imported (cli.without_torch)."""
    out = tmp_path / "run"
    args = [f"--model={tiny}", "--max_tokens=64", "--num_prompts=1", "--max_k=8"]
    args += [f"--output_dir={out}", "--noprogress"]
    wrapper = (
        "import atexit, runpy, sys; "
        "atexit.register(lambda: print('TORCH', sys.modules.get('torch'))); "
        f"sys.argv = {[SCRIPT, *args]!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    proc = subprocess.run(
        [sys.executable, "-c", wrapper], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "TORCH None" in proc.stdout
    for noise in ["Unable to initialize backend", "PyTorch was not found", "libtpu"]:
        assert noise not in proc.stderr + proc.stdout, noise
    meta = files.read_json(str(out / "metadata.json"))
    assert meta["flags"]["range_max"] == 63
    assert np.load(out / "results.npz")["gride_ids"].shape[-1] == 5


def test_bfloat16_on_cpu_computes_in_float32_from_bfloat16_weights(tiny, tmp_path):
    """The CPU execution policy: --dtype=bfloat16 --param_dtype=bfloat16 runs as float32
    compute on bfloat16 parameters, recorded in metadata.json."""
    from geom_jax import pipeline

    assert pipeline.execution_dtypes("bfloat16", "bfloat16", "cpu") == ("float32", "bfloat16")
    assert pipeline.execution_dtypes("bfloat16", "float32", "cpu") == ("float32", "float32")
    assert pipeline.execution_dtypes("bfloat16", "bfloat16", "gpu") == ("bfloat16", "bfloat16")
    kw = dict(num_prompts=1, method="structured")
    got = geom_run.run(
        _spec(tiny, tmp_path / "bf16", dtype="bfloat16", param_dtype="bfloat16", **kw)
    )
    meta = files.read_json(str(tmp_path / "bf16" / "metadata.json"))
    assert meta["execution_dtypes"] == {"compute": "float32", "params": "bfloat16"}
    assert meta["flags"]["dtype"] == "bfloat16"
    want = geom_run.run(_spec(tiny, tmp_path / "ref", param_dtype="bfloat16", **kw))
    for k in ["gride_ids", "overlap", "cos_mean", "loss", "token_nll"]:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
