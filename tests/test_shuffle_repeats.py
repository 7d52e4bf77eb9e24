"""--shuffle_repeats and --method=permuted (issue 15, acceptance 4): the documented
rows, the same values for repeat 0 as a single shuffle, exact resume after
kill -9, and clear refusals; --lens refusals of token_geometry."""

import functools
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags as absl_flags
from helpers import run_helpers
from helpers.tiny_model import write_tiny_llama

from geom_jax import data, models, results
from geom_jax import run as geom_run
from geom_jax.lens import tuned
from geom_jax.run import flags as run_flags

ROOT, SCRIPT = run_helpers.ROOT, run_helpers.SCRIPT
_spec = functools.partial(
    run_helpers.small_spec, method="shuffled", max_shuffle=2, num_prompts=2, batch_size=2
)


def test_shuffle_repeats_rows_and_repeat_zero_unchanged(tiny, tmp_path):
    got = geom_run.run(_spec(tiny, tmp_path / "r3", shuffle_repeats=3, num_prompts=1))
    np.testing.assert_array_equal(got["shuffle_index"], [0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(got["shuffle_repeat"], [0, 0, 1, 2, 0, 1, 2])
    assert got["gride_ids"].shape[0] == 7
    assert len(np.unique(got["loss"])) == 7  # independent shuffles
    single = geom_run.run(_spec(tiny, tmp_path / "r1", num_prompts=1))
    np.testing.assert_array_equal(single["shuffle_repeat"], np.zeros(3))
    first = got["shuffle_repeat"] == 0
    for k in single:
        per_row = got[k][first] if k != "gride_n1" else got[k]
        np.testing.assert_array_equal(per_row, single[k], err_msg=k)
    disk = np.load(tmp_path / "r3" / "results.npz")
    assert disk["shuffle_repeat"].shape == (7,)
    assert "shuffle_repeat" in (tmp_path / "r3" / "RESULTS.md").read_text()


def test_permuted_rows_are_full_permutations(tiny, tmp_path):
    spec = _spec(tiny, tmp_path / "perm", method="permuted", shuffle_repeats=3)
    got = geom_run.run(spec)
    np.testing.assert_array_equal(got["shuffle_index"], np.tile([0, -1, -1, -1], 2))
    np.testing.assert_array_equal(got["shuffle_repeat"], np.tile([0, 0, 1, 2], 2))
    model, tok = models.load(tiny)
    sel = data.select_prompts(data.open_source(data.PYDOC), [tok], max_tokens=32, num_prompts=2)
    ids = sel.token_ids[0]
    perms = [
        data.shuffle_tokens(ids, -1, seed=0, prompt_index=int(sel.indices[0]), repeat=r)
        for r in range(3)
    ]
    for p in perms:
        assert sorted(p) == sorted(ids) and not np.array_equal(p, ids)
    assert not np.array_equal(perms[0], perms[1])
    loss = [float(model(p[None]).loss) for p in [ids] + perms]
    np.testing.assert_allclose(got["loss"][:4], loss, rtol=1e-5)
    orders = [data.full_permutation(64, seed=0, prompt_index=7, repeat=r) for r in range(20)]
    moved = np.mean([np.mean(o != np.arange(64)) for o in orders])
    assert moved > 0.9  # every token moved on its own, not blocks


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(method="structured", shuffle_repeats=3),
            "--shuffle_repeats=3 applies to --method=shuffled or --method=permuted",
        ),
        (dict(shuffle_repeats=0), "--shuffle_repeats must be positive, got 0"),
        (dict(lens="tuned"), "--lens must be 'logit' or 'tuned:DIR', got 'tuned'"),
        (
            dict(lens="tuned:/nonexistent"),
            "--lens=tuned:/nonexistent applies to the lens observable; add lens",
        ),
        (
            dict(lens="tuned:/nonexistent", observables="paper,lens"),
            "'/nonexistent' is not a tuned lens: it has no lens.json",
        ),
        (dict(observables="paper,logit_id", logit_range_max=1), "--logit_range_max must be"),
    ],
)
def test_refused_before_compute(tiny, tmp_path, overrides, message):
    out = tmp_path / "run"
    with run_helpers.raises_user_error(message):
        geom_run.run(_spec(tiny, out, **overrides))
    assert not (out / "checkpoints").exists()


def test_resume_refuses_other_repeats(tiny, tmp_path):
    out = tmp_path / "run"
    spec = _spec(tiny, out, num_prompts=1, shuffle_repeats=2)
    geom_run.run(spec)
    with run_helpers.raises_user_error(r"--shuffle_repeats=2 \(now 3\)"):
        geom_run.run(spec.replace(shuffle_repeats=3, resume=True))


def test_tuned_lens_of_another_model_is_refused(tiny, tmp_path):
    model, _ = models.load(tiny)
    lens_dir = tuned.save(str(tmp_path / "lens"), tuned.identity(3, 64), model)
    other = write_tiny_llama(str(tmp_path / "other"), seed=1)
    spec = _spec(other, tmp_path / "run", observables="paper,lens", lens=f"tuned:{lens_dir}")
    with run_helpers.raises_user_error(r"trained for model 'tiny-llama' .* not for model 'other'"):
        geom_run.run(spec)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow  # a run of the CLI, killed, resumed, plus the reference
def test_permuted_repeats_resume_exactly_after_sigkill(tiny, tmp_path, caplog):
    """The command line killed with SIGKILL after its third checkpoint (of 12 batches),
    then resumed (the same flags with --resume, parsed and run in this process): the rows equal an
    uninterrupted run's, which goes first so that the command line loads its compiled
    steps from the suite's cache."""
    import logging

    spec = _spec(
        tiny, tmp_path / "full", method="permuted", shuffle_repeats=2, num_prompts=4, batch_size=1
    )
    full = geom_run.run(spec)
    args = [
        f"--model={tiny}",
        "--method=permuted",
        "--shuffle_repeats=2",
        "--max_tokens=32",
        "--num_prompts=4",
        "--batch_size=1",
        "--range_max=16",
        "--max_k=8",
        "--checkpoint_every=1",
        "--noprogress",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, *args, f"--output_dir={killed}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ckpt = killed / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline:
        steps = [d for d in os.listdir(ckpt) if d.isdigit()] if ckpt.is_dir() else []
        if steps and max(map(int, steps)) >= 3:
            break
        if proc.poll() is not None:
            pytest.fail("run ended before it could be killed:\n" + proc.stdout.read())
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / results.RESULTS_FILE).exists(), "the run was not killed mid-way"
    fv = absl_flags.FlagValues()
    run_flags.define_flags(fv)
    fv(["prog", *args, f"--output_dir={killed}", "--resume"])
    with caplog.at_level(logging.INFO):
        geom_run.run(run_flags.spec_from_flags(fv))
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "Resumed from checkpoint" in log and "of 12 rows done" in log, log
    got = np.load(killed / results.RESULTS_FILE)
    assert len(got["shuffle_repeat"]) == 12
    for k in full:
        np.testing.assert_array_equal(got[k], full[k], err_msg=k)
