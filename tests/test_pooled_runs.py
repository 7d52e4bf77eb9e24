"""Pooled runs (issue 22): one point per row, each level's rows a cloud; the files,
the equality of the stored points with the model's hidden states, resume after kill -9,
and the bad inputs refused before compute."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_helpers, subprocess_env, tolerances
from test_plots import _fake_run

from geom_jax import metrics, models, report, results
from geom_jax import run as geom_run
from geom_jax.io.representation_store import RepresentationStore
from geom_jax.run.kinds import pooled_rows, pooled_sweep

POOLED = dict(
    pool="last",
    windows=True,
    max_tokens=12,
    num_prompts=60,
    method="permuted",
    partitions=2,
    batch_size=8,
    checkpoint_every=1,
    max_k=8,
    label_k=8,
)
"""The pooled runs of this file (range_max automatic)."""


def _spec(model, out, **kw):
    return run_helpers.small_spec(model, out, **{**POOLED, "range_max": None, **kw})


def _flags(model, out, *extra):
    """The command line of the same run as :func:`_spec` (no progress bar)."""
    flags = [f"--{k}" if v is True else f"--{k}={v}" for k, v in POOLED.items()]
    return [f"--model={model}", *flags, *extra, "--noprogress", f"--output_dir={out}"]


@pytest.fixture(scope="module")
def pooled(tiny, tmp_path_factory):
    spec = _spec(tiny, tmp_path_factory.mktemp("pooled") / "run")
    return spec, geom_run.run(spec)


def test_pooled_files_and_points(pooled, tiny):
    spec, got = pooled
    out = spec.output_dir
    # 60 windows x (structured + 1 permutation) = 120 rows; 2 levels x 2 partitions.
    np.testing.assert_array_equal(got["cloud_shuffle"], [0, 0, -1, -1])
    np.testing.assert_array_equal(got["cloud_partition"], [0, 1, 0, 1])
    np.testing.assert_array_equal(got["n_points"], [30, 30, 30, 30])
    layers = 3
    assert got["gride_ids"].shape[:2] == (4, layers) and got["overlap"].shape[:2] == (4, 2)
    assert got["cos_mean"].shape == (4, layers + 1)
    assert got["info_imbalance_next"].shape == (4, layers - 1, 2)
    assert got["local_id"].shape == (120, layers) and "loss" not in got
    with np.load(os.path.join(out, results.TOKENS_FILE)) as z:
        rows = {k: z[k] for k in z.files}
    assert rows["input_ids"].shape == (120, 12)
    np.testing.assert_array_equal(rows["row_shuffle"], np.tile([0, -1], 60))
    meta = json.loads(open(os.path.join(out, results.METADATA_FILE)).read())
    assert meta["flags"]["pool"] == "last" and meta["flags"]["partitions"] == 2
    assert meta["flags"]["range_max"] == 29  # the smallest cloud (30 points) supports 29
    # The stored points are the model's hidden states at each row's last token.
    model, _ = models.load(tiny)
    store = RepresentationStore.open_existing(os.path.join(out, pooled_sweep.STORE))
    assert (store.rows, store.layers, store.chunk_rows) == (120, layers + 1, 8)
    pick = np.arange(0, 120, 7)
    hidden = np.asarray(model(jnp.asarray(rows["input_ids"][pick])).hidden_states)
    np.testing.assert_allclose(store.read(pick), hidden[:, :, -1].transpose(1, 0, 2), rtol=1e-5)
    # Each cloud's geometry is layer_geometry of its points (rows of the level and partition).
    _, reps, cl = _stored_clouds(spec)
    for c, cloud in enumerate(cl):
        geo = metrics.layer_geometry(np.moveaxis(reps[cloud.rows], 0, 1)[1:], range_max=29, max_k=8)
        np.testing.assert_allclose(got["gride_ids"][c], geo.gride_ids, rtol=1e-5)
        np.testing.assert_array_equal(got["overlap"][c], geo.overlap)
        # a per-point field is stored per row: each row's value in its cloud
        local = metrics.layer_geometry(
            np.moveaxis(reps[cloud.rows], 0, 1)[1:], observables="mle_id"
        ).local_id
        np.testing.assert_allclose(got["local_id"][cloud.rows], local.T, rtol=1e-5)
    assert results.load(out).local_id.dims == ("row", "layer")


def _stored_clouds(spec):
    """(row fields of tokens.npz, the stored points [rows, L+1, D], the run's clouds)."""
    out = spec.output_dir
    with np.load(os.path.join(out, results.TOKENS_FILE)) as z:
        rows = {k: z[k] for k in z.files}
    store = RepresentationStore.open_existing(os.path.join(out, pooled_sweep.STORE))
    reps = store.read(slice(None))
    as_run = pooled_rows.Rows(
        input_ids=rows["input_ids"],
        attention_mask=rows["attention_mask"],
        prompt_index=rows["row_prompt_index"],
        prompt_key=rows["row_prompt_key"],
        shuffle=rows["row_shuffle"],
        repeat=rows["row_repeat"],
        label=rows.get("row_label"),
    )
    return rows, reps, pooled_rows.clouds_of(spec, as_run)


def _label_atol(spec):
    """label_overlap_curve_atol of each cloud of a pooled run [clouds, L, label_k]: its
    stored points (layers 1..L) and row labels."""
    rows, reps, cl = _stored_clouds(spec)
    return np.stack(
        [
            tolerances.label_overlap_curve_atol(
                np.moveaxis(reps[c.rows], 0, 1)[1:], rows["row_label"][c.rows], spec.label_k
            )
            for c in cl
        ]
    )


def test_results_load_of_a_pooled_run(pooled):
    spec, got = pooled
    ds = results.load(spec.output_dir)
    assert ds["gride_ids"].dims == ("cloud", "layer", "scale")
    assert ds["input_ids"].dims == ("row", "position") and "row_prompt_key" in ds.coords
    np.testing.assert_array_equal(ds["gride_ids"].values, got["gride_ids"])
    np.testing.assert_array_equal(ds["cloud_shuffle"].values, got["cloud_shuffle"])


def test_sigkill_then_resume_equals_uninterrupted(pooled, tiny, tmp_path):
    """The command line (the fixture's settings, so it loads the fixture's compiled steps
    from the suite's cache) killed with SIGKILL once 3 of the store's 15 chunks are
    written, then resumed (the same settings as a RunSpec, in this process): the results
    and the stored points equal the uninterrupted run's."""
    spec, got = pooled
    out = tmp_path / "killed"
    args = _flags(tiny, out)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, run_helpers.SCRIPT, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    chunk = out / pooled_sweep.STORE / "c"
    deadline = time.time() + 300
    while time.time() < deadline and not (chunk.is_dir() and len(os.listdir(chunk)) >= 3):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / results.RESULTS_FILE).exists()
    geom_run.run(spec.replace(output_dir=str(out), resume=True))
    with np.load(out / results.RESULTS_FILE) as z:
        for k in ("gride_ids", "overlap", "cos_mean", "twonn"):
            np.testing.assert_array_equal(z[k], got[k], err_msg=k)
    fresh = RepresentationStore.open_existing(str(out / pooled_sweep.STORE))
    whole = RepresentationStore.open_existing(os.path.join(spec.output_dir, pooled_sweep.STORE))
    np.testing.assert_array_equal(fresh.read(slice(None)), whole.read(slice(None)))


@pytest.mark.parametrize(
    "kw, message",
    [
        (
            dict(observables="pooled,curvature"),
            r"--pool=last: curvature need\(s\) a prompt's token",
        ),
        (dict(partitions=20), r"--partitions=20 leaves 3 points per cloud"),
        (
            dict(range_max=64),
            r"--range_max=64 needs clouds of >= 65 points, but the smallest has 30",
        ),
        (dict(label_field="topic", windows=False), r"--label_field labels windows: add --windows"),
        (dict(num_prompts=100000), r"--num_prompts \(windows\)"),
        (
            dict(neighbour_path="ring"),
            r"--neighbour_path='ring': neighbour_path='ring' splits each cloud's points over "
            r"the 'data' axis of a mesh",
        ),
        (
            dict(observables="gride,label_overlap,probes"),
            r"--observables: probes cannot measure these clouds .*: --labels must have at "
            r"least 2 classes of >= --probe_folds=5 valid rows in each cloud \(smaller classes "
            r"are left out\), cloud \(0,\) has [01]$",
        ),
    ],
)
def test_bad_pooled_input_refused_before_compute(tiny, tmp_path, kw, message):
    out = tmp_path / "run"
    with run_helpers.raises_user_error(message):
        geom_run.run(_spec(tiny, out, **kw))
    assert not (out / pooled_sweep.STORE).exists()


def test_label_field_missing_from_a_record(tiny, tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [{"text": "alpha beta gamma delta " * 20, "topic": "a"}, {"text": "eta theta " * 30}]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    with run_helpers.raises_user_error(r"--label_field: record .*line 2 has no field 'topic'"):
        geom_run.run(
            _spec(
                tiny,
                tmp_path / "run",
                dataset=str(path),
                label_field="topic",
                num_prompts=4,
                partitions=1,
            )
        )


def test_a_store_of_another_shape_is_refused(pooled, tiny, tmp_path):
    spec, _ = pooled
    out = tmp_path / "run"
    RepresentationStore.open_or_create(
        str(out / pooled_sweep.STORE), rows=7, layers=4, dim=16, chunk_rows=8
    )
    with run_helpers.raises_user_error(r"representation store .* holds \[7, 4, 16\]"):
        geom_run.run(_spec(tiny, out, resume=True))


EIGHT = ("--mesh_shape=8,1", "--block_rows=8", "--observables=pooled,pca_id")
"""The runs on 8 devices. Blocks of 8 rows (the default block, at least 64 rows, would
hold each 30-point cloud whole, so every device would compute every row): the devices split
each cloud's rows, and a split that lost a row would show. pca_id: a batched SVD on
XLA:CPU's thread pool deadlocked against the devices' all-gathers (history 23); the
observable maps over clouds instead."""


@pytest.fixture(scope="module")
def eight(tiny, tmp_path_factory):
    """The command line on 8 simulated CPU devices in one process (--mesh_shape=8,1: the
    forward's batch and each cloud's row blocks split over them): its folder."""
    out = tmp_path_factory.mktemp("eight") / "run"
    proc = subprocess.run(
        [sys.executable, run_helpers.SCRIPT, *_flags(tiny, out, *EIGHT)],
        env=subprocess_env.simulated_devices_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_eight_devices_equal_one(pooled, eight):
    """The run on 8 devices equals the one-device run (default blocks)."""
    spec, got = pooled
    with np.load(eight / results.RESULTS_FILE) as z:
        np.testing.assert_allclose(z["gride_ids"], got["gride_ids"], rtol=1e-5)
        np.testing.assert_allclose(z["twonn"], got["twonn"], rtol=1e-5)
        np.testing.assert_array_equal(z["overlap"], got["overlap"])
        assert np.isfinite(z["pca_id"]).all() and (z["pca_id"] >= 1).all()
        tolerances.assert_rank_field(
            z["label_overlap"], got["label_overlap"], "label_overlap_curve", _label_atol(spec)
        )


def _launch_two(tiny, out, port, *extra):
    """The 8-device command line as two processes of 4 devices each (gloo)."""
    logs = [open(f"{out}.{p}.log", "w") for p in range(2)]
    return [
        subprocess.Popen(
            [
                sys.executable,
                run_helpers.SCRIPT,
                *_flags(tiny, out, *EIGHT, *extra),
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={p}",
            ],
            env=subprocess_env.simulated_devices_env(4),
            stdout=logs[p],
            stderr=subprocess.STDOUT,
        )
        for p in range(2)
    ]


def _store_files(out):
    """{path in the run folder: bytes} of both stores."""
    found = {}
    for store in (pooled_sweep.STORE, pooled_sweep.LOSS_STORE):
        for root, _, names in os.walk(out / store):
            for name in names:
                path = os.path.join(root, name)
                found[os.path.relpath(path, out)] = open(path, "rb").read()
    return found


def test_two_processes_kill_one_then_resume_equal_one_process(eight, tiny, tmp_path):
    """Issue 31: the 8-device run as two processes of 4 devices, process 1 killed with
    SIGKILL once it has written 2 chunks of its own (the forward in progress), then both
    resumed: tokens.npz equals the one-process run's, results.npz too (neighbour-derived
    and integer fields exactly, IDs within 1e-5 relative), and the stores are
    byte-identical (chunk files and the merged manifests; no writer's part left). The
    resumed launch is itself a whole two-process run: the chunks the killed launch left
    are verified and kept, the others written by their owners."""
    from test_sharding import _free_port

    out = tmp_path / "two"
    procs = _launch_two(tiny, out, _free_port())
    part = out / pooled_sweep.STORE / "geom_jax_chunks.writer-1.json"

    def two_chunks_recorded():
        try:
            return len(json.loads(part.read_text())["chunks"]) >= 2
        except (OSError, ValueError, KeyError):
            return False

    run_helpers.wait_while_running(two_chunks_recorded, procs)
    run_helpers.kill_second_then_first(procs)
    assert not (out / results.RESULTS_FILE).exists()
    resumed = _launch_two(tiny, out, _free_port(), "--resume")
    for p in resumed:
        p.wait(timeout=600)
    for p, proc in enumerate(resumed):
        assert proc.returncode == 0, open(f"{out}.{p}.log").read()[-4000:]
    with np.load(out / results.TOKENS_FILE) as got, np.load(eight / results.TOKENS_FILE) as want:
        assert sorted(got.files) == sorted(want.files)
        for k in want.files:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    with np.load(out / results.RESULTS_FILE) as got, np.load(eight / results.RESULTS_FILE) as want:
        assert sorted(got.files) == sorted(want.files)
        for k in want.files:
            if want[k].dtype.kind == "f" and k not in ("overlap", "label_overlap"):
                # sums over a cloud's points that GSPMD splits over the devices end in an
                # all-reduce, whose order differs between one process and gloo across two
                # (cos_mean, participation_ratio, tle_id moved by up to 6e-7 at 600 rows)
                np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)
            else:
                np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    got, want = _store_files(out), _store_files(eight)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []
    assert json.load(open(out / "metadata.json"))["num_processes"] == 2


def test_report_of_a_pooled_run_states_its_numbers(pooled, tmp_path):
    """The report's pooled sections: the peak layer and ID per level at the first scale
    (mean and std over partitions, from results.npz here), the structured minus permuted
    difference at the structured peak, and the overlap, imbalance and label sections,
    beside a per-prompt run of the paper's set (as `make run` reports both)."""
    spec, got = pooled
    _fake_run(tmp_path / "prompts", levels=[0, 1])
    folders = [str(tmp_path / "prompts"), spec.output_dir]
    text = open(report.make_report(folders, str(tmp_path / "rep"))).read()
    ids = got["gride_ids"][:, :, 0]  # [clouds, L]
    peak = {}
    for s, name in ((0, "structured (s=0)"), (-1, "permuted")):
        level = ids[got["cloud_shuffle"] == s]
        mean = level.mean(0)
        peak[s] = int(np.argmax(mean))
        row = (
            f"| {name} | {peak[s] + 1} | {mean[peak[s]]:.2f} | {level[:, peak[s]].std():.2f} | 2 |"
        )
        assert row in text, row
    at = peak[0]
    s0, s1 = (ids[got["cloud_shuffle"] == s][:, at].mean() for s in (0, -1))
    assert f"(structured minus permuted: {s0 - s1:+.2f})" in text
    for title in (
        "Intrinsic dimension of dataset-scale clouds",
        "Neighbourhood overlap across layers",
        "Information imbalance",
        "Label overlap across layers",
    ):
        assert f"## {title}" in text, title
        png = tmp_path / "rep" / text.split(f"## {title}\n\n![{title}](", 1)[1].split(")", 1)[0]
        assert png.read_bytes()[:4] == b"\x89PNG"


def _compile_line(stderr):
    lines = [line for line in stderr.splitlines() if "compilation: XLA" in line]
    assert len(lines) == 1, stderr[-3000:]
    m = re.search(r"XLA ([0-9.]+) s for (\d+) programs \((\d+) loaded", lines[0])
    assert m, lines[0]
    return float(m.group(1)), int(m.group(2)), int(m.group(3))


def test_a_second_process_loads_the_compiled_steps(tiny, tmp_path):
    """The same pooled command twice with --compilation_cache: the second process loads
    every program (the forward and the metrics, which hold no Python callback) from
    the persistent cache, as its log and metadata.json say. Times are not asserted (a
    timed unit test would measure the machine's load: loading took 0.22 s against 1.64 s
    of compiling idle, 1.07 s against 3.23 s beside other jobs); the embedded default's
    pooled command, measured: 0.38 s against 12.9 s (docs/history.md section 22)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env["JAX_PLATFORMS"] = "cpu"
    cache = tmp_path / "xla"
    logs = []
    for name in ("first", "second"):
        args = _flags(tiny, tmp_path / name, f"--compilation_cache={cache}")
        proc = subprocess.run(
            [sys.executable, run_helpers.SCRIPT, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        logs.append(_compile_line(proc.stderr))
    (_, programs, first_hits), (_, programs_again, hits) = logs
    assert first_hits == 0 and programs >= 2
    assert hits == programs_again == programs
    with open(tmp_path / "second" / results.METADATA_FILE) as f:
        assert json.load(f)["compilation"]["hits"] == programs


def test_a_pooled_run_resumes_under_another_process_count(pooled, tmp_path):
    """Issue 31: a pooled run's store does not depend on the process count, so its run
    config leaves the count out and --resume under another count is not refused (a
    per-prompt run's is: tests/test_experiment.py)."""
    import shutil

    spec, got = pooled
    assert "num_processes" not in spec.defining()
    out = tmp_path / "copy"
    shutil.copytree(spec.output_dir, out)
    config = out / results.RUN_CONFIG_FILE
    json.dump(dict(json.loads(config.read_text()), num_processes=2), open(config, "w"))
    again = geom_run.run(spec.replace(output_dir=str(out), resume=True))
    np.testing.assert_array_equal(again["gride_ids"], got["gride_ids"])
