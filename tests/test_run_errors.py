"""A new user's mistakes and faults: one-line errors naming the flag, file or
key, checked before anything is written, and an output folder that stays
reusable; one run per folder; damaged results rebuilt on --resume."""

import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags as absl_flags
from helpers import run_helpers

from geom_jax import data, results
from geom_jax import run as geom_run
from geom_jax.run import disk_space
from geom_jax.run import flags as run_flags
from geom_jax.run import lock as run_lock

ROOT, SCRIPT = run_helpers.ROOT, run_helpers.SCRIPT
_spec = functools.partial(run_helpers.small_spec, method="structured", num_prompts=2, batch_size=1)


def _variant(tiny, tmp_path, **config):
    """A copy of the tiny checkpoint with config.json keys replaced."""
    path = tmp_path / "variant"
    shutil.copytree(tiny, path)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(config)
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path)


def _reusable(spec):
    """A fresh run (no --resume) into the folder passes the folder check."""
    geom_run.output_dir.check_output_dir(spec.replace(resume=False))
    return True


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_prompts=-3), r"--num_prompts must be >= 0 \(0 = every qualifying .*got -3"),
        (dict(layer_chunk=-2), r"--layer_chunk must be >= 0 \(0 = automatic\), got -2"),
        (dict(seed=-1), "--seed must be >= 0, got -1"),
        (dict(max_shuffle=-1), "--max_shuffle must be >= 0, got -1"),
        (dict(max_k=0), "max_k must be an integer >= 1"),
        (dict(max_tokens=3000), r"--max_tokens=3000 exceeds the context .* is 2048"),
    ],
)
def test_flag_ranges_refused_before_the_folder_exists(tiny, tmp_path, overrides, message):
    out = tmp_path / "run"
    with run_helpers.raises_user_error(message):
        geom_run.run(_spec(tiny, out, **overrides))
    assert not out.exists()


def test_negative_num_prompts_flag_is_not_all_prompts():
    fv = absl_flags.FlagValues()
    run_flags.define_flags(fv)
    fv(["prog", "--num_prompts=-3", "--layer_chunk=-2", "--output_dir=x"])
    spec = run_flags.spec_from_flags(fv)
    assert spec.num_prompts == -3 and spec.layer_chunk == -2
    fv(["prog", "--num_prompts=0", "--layer_chunk=0", "--output_dir=x"])
    spec = run_flags.spec_from_flags(fv)
    assert spec.num_prompts is None and spec.layer_chunk is None


def test_context_length_names_both_numbers(tiny, tmp_path):
    model = _variant(tiny, tmp_path, max_position_embeddings=64)
    out = tmp_path / "run"
    with run_helpers.raises_user_error(
        r"--max_tokens=64 \+ 1 \(--add_bos\) exceeds .*max_position_embeddings is 64",
    ):
        geom_run.run(_spec(model, out, add_bos=True, max_tokens=64))
    assert not out.exists()


def test_unsupported_architecture_refused_before_the_folder_exists(tiny, tmp_path):
    model = _variant(tiny, tmp_path, model_type="bloom", architectures=["BloomForCausalLM"])
    out = tmp_path / "run"
    with run_helpers.raises_user_error(r"--model=.*: unsupported architecture Bloom"):
        geom_run.run(_spec(model, out))
    assert not out.exists()


def test_token_ids_outside_the_vocabulary_refused_before_compute(tiny, tmp_path):
    model = _variant(tiny, tmp_path, vocab_size=64)
    out = tmp_path / "run"
    with run_helpers.raises_user_error(
        r"--model=.*: the prompts. input_ids\[0, \d+\] = \d+ is outside the model.s vocabulary"
    ):
        geom_run.run(_spec(model, out))
    assert _reusable(_spec(model, out))


@pytest.mark.parametrize("keep", [1000, 3_000_000])
def test_truncated_gguf_named_with_size_and_offset(tmp_path, keep):
    from geom_jax.models.loading.embedded import smollm2_gguf_path

    path = tmp_path / "short.gguf"
    with open(smollm2_gguf_path(), "rb") as fh:
        path.write_bytes(fh.read(keep))
    out = tmp_path / "run"
    with run_helpers.raises_user_error(
        rf"{path}: {keep} bytes, but the GGUF data continues to offset \d+",
    ):
        geom_run.run(_spec(str(path), out))
    assert not out.exists()


def test_truncated_safetensors_named_and_folder_reusable(tiny, tmp_path):
    model = _variant(tiny, tmp_path)
    weights = os.path.join(model, "model.safetensors")
    size = os.path.getsize(weights)
    os.truncate(weights, size // 2)
    out = tmp_path / "run"
    with run_helpers.raises_user_error(
        rf"{weights}: {size // 2} bytes, but tensor '.*' ends at offset {size}",
    ):
        geom_run.run(_spec(model, out))
    assert _reusable(_spec(model, out))


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_non_utf8_text_names_file_and_offset(tiny, tmp_path, kind):
    path = tmp_path / f"bad.{kind}"
    good = b'{"text": "fine"}\n' if kind == "jsonl" else b"fine text "
    path.write_bytes(good + b"caf\xe9 au lait")
    with run_helpers.raises_user_error(
        rf"--dataset: {path} is not UTF-8 text: byte 0xe9 at offset {len(good) + 3}",
    ):
        geom_run.run(_spec(tiny, tmp_path / "run", dataset=str(path)))
    assert _reusable(_spec(tiny, tmp_path / "run"))


def test_unreachable_hub_dataset_fails_fast_naming_it(tiny, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    start = time.time()
    with run_helpers.raises_user_error(
        r"cannot fetch the Hugging Face dataset 'no-org/no-such-set': the network is "
        r"unavailable \(cannot connect to 127.0.0.1:9.*pass a local path",
    ):
        geom_run.run(_spec(tiny, tmp_path / "run", dataset="no-org/no-such-set"))
    assert time.time() - start < 15
    assert data.sources.hub_unreachable() is not None
    assert _reusable(_spec(tiny, tmp_path / "run"))


def test_full_disk_is_one_line_and_resume_continues(tiny, tmp_path, monkeypatch):
    out = tmp_path / "run"
    spec = _spec(tiny, out)

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results, "save_results", full)
    with pytest.raises(geom_run.UserError) as err:
        geom_run.run(spec)
    message = run_flags.message(err.value)
    assert "\n" not in message and str(out) in message
    assert "needs about" in message and "rerun with --resume" in message
    monkeypatch.undo()
    got = geom_run.run(spec.replace(resume=True))
    assert got["gride_ids"].shape[0] == 2


def test_full_disk_found_inside_wrapped_exceptions():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise ValueError("orbax: save failed") from inner
    except ValueError as e:
        assert disk_space.is_disk_full(e)
    assert disk_space.is_disk_full(RuntimeError("RESOURCE_EXHAUSTED: No space left on device"))
    assert not disk_space.is_disk_full(RuntimeError("RESOURCE_EXHAUSTED: Out of memory"))


def test_too_little_free_space_refused_before_compute(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(disk_space, "free_bytes", lambda folder: 1000)
    out = tmp_path / "run"
    with run_helpers.raises_user_error(rf"no space left on the device holding {out}"):
        geom_run.run(_spec(tiny, out))
    assert not (out / "checkpoints").exists() and _reusable(_spec(tiny, out))


def test_second_run_into_the_folder_is_refused_naming_the_first(tiny, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from geom_jax.run import lock as run_lock; "
            f"run_lock.RunLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with run_helpers.raises_user_error(
            rf"{out} is in use by another run \(pid {holder.pid} on host",
        ):
            geom_run.run(_spec(tiny, out, resume=True))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The killed holder's lock file remains, but its flock died with it: stale.
    assert json.loads((out / run_lock.LOCK_FILE).read_text())["pid"] == holder.pid
    got = geom_run.run(_spec(tiny, out, resume=True))
    assert got["gride_ids"].shape[0] == 2 and not (out / run_lock.LOCK_FILE).exists()


def test_lock_in_the_same_process_is_exclusive(tmp_path):
    with run_lock.RunLock(str(tmp_path)):
        with pytest.raises(run_lock.RunLockedError, match=f"pid {os.getpid()}"):
            run_lock.RunLock(str(tmp_path)).acquire()
    with run_lock.RunLock(str(tmp_path)):
        pass


def _scribble(path):
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2 : len(raw) // 2 + 8] = b"\xff" * 8
    open(path, "wb").write(bytes(raw))


def test_damaged_results_and_checkpoint_rebuilt_on_resume(tiny, tmp_path, caplog):
    import logging

    out = tmp_path / "run"
    spec = _spec(tiny, out, num_prompts=3, checkpoint_every=1)
    first = geom_run.run(spec)
    _scribble(out / results.RESULTS_FILE)
    with pytest.raises(results.DamagedResultsError, match="results.npz does not match"):
        results.load_results(str(out))
    latest = max(int(n) for n in os.listdir(out / "checkpoints") if n.isdigit())
    chunks = [
        os.path.join(r, f) for r, _, fs in os.walk(out / "checkpoints" / str(latest)) for f in fs
    ]
    _scribble(max((c for c in chunks if os.sep + "d" + os.sep in c), key=os.path.getsize))
    with caplog.at_level(logging.WARNING):
        again = geom_run.run(spec.replace(resume=True))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "results.npz does not match the SHA-256" in text and "rebuilding it" in text
    assert f"checkpoint {latest} in {out / 'checkpoints'} is damaged" in text
    for k in first:
        if k != "metadata":
            np.testing.assert_array_equal(again[k], first[k], err_msg=k)
    assert results.results_problem(str(out)) is None


def test_prompt_of_one_repeated_token_is_reported_not_measured(tiny, tmp_path, caplog):
    """Hidden states of a repeated token differ by rounding noise only: no ID
    above 20 from noise; every ID is NaN or its layer is flagged; n_unique and
    the status are saved, and the run prints a one-line summary."""
    import logging

    text = tmp_path / "repeated.txt"
    text.write_text("a" * 400)  # 100 identical tokens "aaaa"
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        got = geom_run.run(_spec(tiny, out, dataset=str(text), num_prompts=1))
    saved = np.load(out / results.RESULTS_FILE)
    assert saved["n_unique"].dtype == np.int32 and saved["status"].dtype == np.int32
    assert (saved["n_unique"] <= 2).all() and saved["finite"].all()
    ids = np.concatenate([saved["gride_ids"].reshape(-1), saved["twonn"].reshape(-1)])
    assert not (ids > 20).any()
    flagged = np.repeat(saved["status"][..., None] != 0, saved["gride_ids"].shape[-1], -1)
    assert (np.isnan(saved["gride_ids"]) | flagged).all()
    assert np.isnan(saved["twonn"]).all()
    lines = [r.getMessage() for r in caplog.records if "degenerate clouds" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("degenerate clouds among 1 rows x 3 layers: 1 rows (3 layers)")
    np.testing.assert_array_equal(got["status"], saved["status"])


def _cli(args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, SCRIPT, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # a suite started as a background job inherits SIGINT ignored; the tool run
        # from a terminal has it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_help_lists_the_tools_own_flags():
    proc = _cli(["--help"])
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode in (0, 1)  # absl's --help exits with 1
    for flag in ("--max_tokens", "--num_prompts", "--resume", "--output_dir", "--layer_chunk"):
        assert flag in out, flag
    # the tool's own flags (about 270 lines with every observable's options); JAX's and
    # absl's would add several hundred more
    assert "--jax_" not in out and "--logtostderr" not in out and len(out.splitlines()) < 400


@pytest.mark.slow
def test_ctrl_c_ends_with_one_line_and_resume_continues(tiny, tmp_path):
    """SIGINT to the command line after its first checkpoint: one line, exit 130, no
    results; the same flags with --resume (parsed here, run in this process) finish it."""
    out = tmp_path / "run"
    args = [
        f"--model={tiny}",
        "--max_tokens=32",
        "--num_prompts=40",
        "--range_max=16",
        "--max_k=8",
        "--checkpoint_every=1",
        "--noprogress",
        f"--output_dir={out}",
    ]
    proc = _cli(args)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        ck = out / "checkpoints"
        if ck.is_dir() and any(n.isdigit() for n in os.listdir(ck)):
            break
        time.sleep(0.05)
    alive = proc.poll() is None
    listing = sorted(os.listdir(out / "checkpoints")) if (out / "checkpoints").is_dir() else None
    proc.send_signal(signal.SIGINT)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, (alive, listing, log)
    assert log.rstrip().splitlines()[-1] == "interrupted; rerun with --resume to continue"
    assert "Traceback" not in log and not (out / results.RESULTS_FILE).exists()
    fv = absl_flags.FlagValues()
    run_flags.define_flags(fv)
    fv(["prog", *args, "--resume"])
    got = geom_run.run(run_flags.spec_from_flags(fv))
    assert got["gride_ids"].shape[0] == 40
    assert np.load(out / results.RESULTS_FILE)["gride_ids"].shape[0] == 40


def test_an_unusable_compilation_cache_folder_only_turns_the_cache_off(tmp_path):
    """--compilation_cache under a file (or anywhere it cannot be created): a warning and
    no cache, not a failed run."""
    import jax

    from geom_jax.run import compilation

    before = jax.config.jax_compilation_cache_dir
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert compilation.enable(str(blocker / "xla")) is None
        assert jax.config.jax_compilation_cache_dir is None
        assert compilation.enable(str(tmp_path / "xla")) == str(tmp_path / "xla")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
