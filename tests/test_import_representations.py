"""Representations from anywhere: arrays held outside geom-jax imported as a run folder
(experiments/import_representations.py, geom_jax.run.importer), read by results.load and
compared with compare_representations' key matching; every bad input refused in one line
before anything is written."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorstore as ts
import torch
from helpers import run_helpers

from geom_jax import report, results
from geom_jax.io import files
from geom_jax.io.representation_store import RepresentationStore
from geom_jax.run import compare, importer
from geom_jax.run import flags as run_flags
from geom_jax.run.kinds import IMPORTED_RUN, POOLED_RUN, pooled_sweep

SCRIPT = os.path.join(run_helpers.ROOT, "experiments", "import_representations.py")
L, N, D = 3, 24, 8
MEASURES = ("mutual_knn", "cka")


def _points(seed=0, shape=(L, N, D), dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _stored(folder) -> np.ndarray:
    """The imported run's store as [L, N, D]."""
    store = RepresentationStore.open_existing(os.path.join(folder, pooled_sweep.STORE))
    assert not store.check().problems
    return np.moveaxis(store.read(slice(None)), 0, 1)


def _write_lines(path, items):
    path.write_text("".join(f"{x}\n" for x in items))
    return str(path)


def _import(tmp_path, source, folder="run", **kw):
    out = str(tmp_path / folder)
    meta = importer.import_representations(str(source), out, **kw)
    return out, meta


# Each format round-trips: the store holds exactly the input's values.


@pytest.mark.parametrize("shape", [(N, D), (L, N, D)])
def test_npy(tmp_path, shape):
    x = _points(shape=shape)
    np.save(tmp_path / "x.npy", x)
    out, meta = _import(tmp_path, tmp_path / "x.npy")
    np.testing.assert_array_equal(_stored(out), x.reshape((-1, N, D)))
    assert meta["imported"]["format"] == "npy" and meta["imported"]["shape"] == list(shape)
    ds = results.load(out)
    assert ds.attrs["model"] == "x.npy" and ds.sizes["row"] == N
    np.testing.assert_array_equal(ds["row_prompt_key"].values, [str(i) for i in range(N)])
    np.testing.assert_array_equal(ds["n_points"].values, [N])


def test_npz_one_hidden_state_per_array_in_natural_order_or_one_named(tmp_path):
    x = _points()
    np.savez(tmp_path / "x.npz", h10=x[2], h2=x[1], h1=x[0])
    out, meta = _import(tmp_path, tmp_path / "x.npz")
    np.testing.assert_array_equal(_stored(out), x)
    assert meta["imported"]["arrays"] == ["h1", "h2", "h10"]
    out, meta = _import(tmp_path, tmp_path / "x.npz", "one", array="h2")
    np.testing.assert_array_equal(_stored(out), x[1:2])


def test_safetensors_of_several_arrays_and_bfloat16(tmp_path):
    from safetensors.torch import save_file

    x = _points(dtype=np.float16)
    tensors = {f"layer.{i}": torch.from_numpy(x[i]) for i in range(L)}
    tensors["bf"] = torch.from_numpy(_points(1, (N, D))).to(torch.bfloat16)
    save_file(tensors, str(tmp_path / "x.safetensors"))
    out, meta = _import(tmp_path, tmp_path / "x.safetensors", array="bf")
    np.testing.assert_array_equal(_stored(out)[0], tensors["bf"].float().numpy())
    assert meta["imported"]["dtype"] == "bfloat16"
    del tensors["bf"]
    save_file(tensors, str(tmp_path / "y.safetensors"))
    out, meta = _import(tmp_path, tmp_path / "y.safetensors", "y")
    np.testing.assert_array_equal(_stored(out), x.astype(np.float32))
    assert meta["imported"]["arrays"] == ["layer.0", "layer.1", "layer.2"]


@pytest.mark.parametrize("driver", ["zarr3", "zarr"])
def test_zarr_array(tmp_path, driver):
    x = _points(dtype=np.float64)
    path = str(tmp_path / "x.zarr")
    spec = {"driver": driver, "kvstore": {"driver": "file", "path": path}}
    arr = ts.open(spec, create=True, dtype=ts.float64, shape=x.shape).result()
    arr.write(x).result()
    out, meta = _import(tmp_path, path, layers="2,0")
    np.testing.assert_array_equal(_stored(out), x[[2, 0]].astype(np.float32))
    assert meta["imported"]["format"] == "zarr" and meta["imported"]["dtype"] == "float64"
    assert meta["imported"]["layers"] == [2, 0]


def test_torch_save_of_hidden_states(tmp_path):
    """A tuple of [B, T, D] per hidden state, right-padded rows: the last real token under
    the mask; and a list of [N, D] already pooled."""
    t = 5
    hidden = _points(shape=(L, N, t, D))
    mask = np.ones((N, t), np.int64)
    lengths = np.random.default_rng(2).integers(1, t + 1, N)
    mask[np.arange(t)[None, :] >= lengths[:, None]] = 0
    torch.save(tuple(torch.from_numpy(h) for h in hidden), tmp_path / "h.pt")
    np.save(tmp_path / "mask.npy", mask)
    out, meta = _import(tmp_path, tmp_path / "h.pt", token_mask=str(tmp_path / "mask.npy"))
    want = hidden[:, np.arange(N), lengths - 1]
    np.testing.assert_array_equal(_stored(out), want)
    assert meta["imported"]["shape"] == [[N, t, D]] * L and meta["imported"]["position"] == "last"
    out, _ = _import(tmp_path, tmp_path / "h.pt", "at_end", position="last")
    np.testing.assert_array_equal(_stored(out), hidden[:, :, -1])
    torch.save([torch.from_numpy(h) for h in want], tmp_path / "pooled.pth")
    out, meta = _import(tmp_path, tmp_path / "pooled.pth", "pooled")
    np.testing.assert_array_equal(_stored(out), want)
    assert meta["imported"]["format"] == "torch"


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="datasets missing")
def test_hugging_face_dataset_column(tmp_path):
    import datasets

    x = _points()  # stored rows first: [N, L, D]
    ds = datasets.Dataset.from_dict({"h": np.moveaxis(x, 0, 1), "text": [str(i) for i in range(N)]})
    ds = ds.cast_column("h", datasets.Array2D((L, D), "float32"))
    ds.save_to_disk(str(tmp_path / "ds"))
    out, meta = _import(tmp_path, tmp_path / "ds", column="h")
    np.testing.assert_array_equal(_stored(out), x)
    assert meta["imported"]["format"] == "datasets" and meta["imported"]["arrays"] == ["h"]


def test_keys_labels_and_provenance_are_saved(tmp_path):
    x = _points()
    np.save(tmp_path / "x.npy", x)
    keys = [f"doc{i}:w0" for i in range(N)]
    labels = np.arange(N) % 4
    out, meta = _import(
        tmp_path,
        tmp_path / "x.npy",
        keys=_write_lines(tmp_path / "keys.txt", keys),
        labels=_write_lines(tmp_path / "labels.txt", labels),
        name="peer",
    )
    ds = results.load(out)
    np.testing.assert_array_equal(ds["row_prompt_key"].values, keys)
    np.testing.assert_array_equal(ds["row_label"].values, labels)
    np.testing.assert_array_equal(ds["row_shuffle"].values, np.zeros(N))
    saved = files.read_json(os.path.join(out, results.METADATA_FILE))
    record = saved["imported"]
    assert record["path"] == str(tmp_path / "x.npy") and record["dtype"] == "float32"
    assert record["sha256"] == files.file_sha256(str(tmp_path / "x.npy"))
    assert record["keys"]["sha256"] == files.file_sha256(str(tmp_path / "keys.txt"))
    assert saved["flags"] == {"pool": "imported"} and saved["model"] == "peer"
    with np.load(os.path.join(out, results.TOKENS_FILE)) as z:
        assert "input_ids" not in z.files
    assert results.results_problem(out) is None
    assert IMPORTED_RUN.report_label(saved, out) == "peer (imported npy)"
    text = open(report.make_report([out], str(tmp_path / "report"))).read()
    assert "## peer (imported npy)" in text


# Comparisons: rows matched by key.


def _pooled_folder(folder, points, keys):
    """A pooled run's folder as token_geometry.py writes it (pool=last, method=permuted):
    each window structured (level 0) then permuted (level -1); points [L, 2N', D]."""
    rows = points.shape[1]
    store = RepresentationStore.open_or_create(
        os.path.join(folder, pooled_sweep.STORE), rows=rows, layers=L, dim=D, chunk_rows=8
    )
    store.write_rows(0, np.ascontiguousarray(np.moveaxis(points, 0, 1)))
    arrays = {
        "cloud_shuffle": np.array([0, -1]),
        "cloud_repeat": np.zeros(2),
        "cloud_partition": np.zeros(2),
        "n_points": np.array([rows // 2] * 2),
        "input_ids": np.zeros((rows, 4)),
        "attention_mask": np.ones((rows, 4)),
        "row_prompt_index": np.repeat(np.arange(rows // 2), 2),
        "row_prompt_key": np.repeat(keys, 2),
        "row_shuffle": np.tile([0, -1], rows // 2),
        "row_repeat": np.zeros(rows),
        "row_loss": np.ones(rows),
    }
    results.save_results(str(folder), arrays, "pooled", POOLED_RUN)
    files.write_json(
        os.path.join(folder, results.METADATA_FILE),
        {"model": "smollm2-135m", "flags": {"pool": "last", "windows": True}},
    )


def test_an_imported_run_against_itself_has_a_unit_diagonal(tmp_path):
    np.save(tmp_path / "x.npy", _points())
    out, _ = _import(tmp_path, tmp_path / "x.npy")
    got = compare.compare(out, out, str(tmp_path / "cmp"), measures=MEASURES, progress=False)
    np.testing.assert_array_equal(np.diagonal(got["mutual_knn"][0]), np.ones(L))
    np.testing.assert_allclose(np.diagonal(got["cka"][0]), 1.0, atol=1e-6)


def test_a_pooled_run_against_its_rows_imported_in_another_order(tmp_path):
    keys = np.asarray([f"t{i}:w{i % 3}" for i in range(N)])
    points = _points(3, (L, 2 * N, D))
    _pooled_folder(tmp_path / "pooled", points, keys)
    order = np.random.default_rng(4).permutation(N)
    structured = points[:, 0::2]  # the level-0 rows, in the pooled run's order
    np.save(tmp_path / "x.npy", structured[:, order])
    out, _ = _import(tmp_path, tmp_path / "x.npy", keys=_write_lines(tmp_path / "k", keys[order]))
    a = compare.open_run(str(tmp_path / "pooled"), "a")
    b = compare.open_run(out, "b")
    ia, ib = compare.match_rows(a, b)
    np.testing.assert_array_equal(ia, np.arange(0, 2 * N, 2))  # a's structured rows, a's order
    np.testing.assert_array_equal(b.rows["row_prompt_key"][ib], keys)
    np.testing.assert_array_equal(_stored(out)[:, ib], structured)
    ib2, ia2 = compare.match_rows(b, a)  # the other way round: b's order
    np.testing.assert_array_equal(a.rows["row_prompt_key"][ia2], keys[order])
    got = compare.compare(
        str(tmp_path / "pooled"), out, str(tmp_path / "cmp"), measures=MEASURES, progress=False
    )
    assert list(got["level_shuffle"]) == [0] and list(got["num_points"]) == [N]
    np.testing.assert_array_equal(np.diagonal(got["mutual_knn"][0]), np.ones(L))
    np.testing.assert_allclose(np.diagonal(got["cka"][0]), 1.0, atol=1e-6)


def test_a_key_of_a_missing_from_b_is_refused_naming_it(tmp_path):
    np.save(tmp_path / "x.npy", _points())
    keys = [f"k{i}" for i in range(N)]
    a, _ = _import(tmp_path, tmp_path / "x.npy", "a", keys=_write_lines(tmp_path / "ka", keys))
    keys[5], keys[9] = "other5", "other9"
    b, _ = _import(tmp_path, tmp_path / "x.npy", "b", keys=_write_lines(tmp_path / "kb", keys))
    with run_helpers.raises_user_error(
        r"^--runs: the runs' rows do not correspond: key 'k5' of '.*/a' is not a row of '.*/b'"
    ):
        compare.match_rows(compare.open_run(a, "a"), compare.open_run(b, "b"))


# Bad input: one line, before anything is written.


def _npy(tmp_path, x, name="x.npy"):
    np.save(tmp_path / name, x)
    return tmp_path / name


def _nan(tmp_path):
    x = _points()
    x[1, 7, 2] = np.nan
    return _npy(tmp_path, x), {}


def _too_large(tmp_path):
    x = _points().astype(np.float64)
    x[2, 3, 0] = 1e300  # inf in float32
    return _npy(tmp_path, x), {}


def _dupe_keys(tmp_path):
    keys = [f"k{i}" for i in range(N)]
    keys[7] = "k3"
    return _npy(tmp_path, _points()), {"keys": _write_lines(tmp_path / "k.txt", keys)}


def _per_token_without_choice(tmp_path):
    torch.save(tuple(torch.zeros(N, 5, D) for _ in range(L)), tmp_path / "h.pt")
    return tmp_path / "h.pt", {}


BAD = {
    "missing file": (
        lambda p: (p / "nope.npy", {}),
        r"^--input: .*/nope.npy does not exist$",
    ),
    "unknown extension": (
        lambda p: (_write_lines(p / "x.csv", ["1,2"]), {}),
        r"^--input: .*x.csv: unknown format '\.csv'; known: \.npy, \.npz",
    ),
    "rank 4": (
        lambda p: (_npy(p, _points(shape=(2, L, N, D))), {}),
        r"^--input: .* holds \[2, 3, 24, 8\]; expected \[N, D\] or \[L, N, D\] \(per-token "
        r"states: .*--position=last or --token_mask\)$",
    ),
    "rank 1": (lambda p: (_npy(p, _points(shape=(N,))), {}), r"holds \[24\]; expected"),
    "NaN row": (
        _nan,
        r"^--input: row 7 of hidden state 1 of .*x.npy is not finite in float32",
    ),
    "beyond float32": (_too_large, r"^--input: row 3 of hidden state 2 of .* is not finite"),
    "labels count": (
        lambda p: (_npy(p, _points()), {"labels": _write_lines(p / "l.txt", range(N - 1))}),
        r"^--labels: .*l.txt has 23 labels for 24 rows$",
    ),
    "keys count": (
        lambda p: (_npy(p, _points()), {"keys": _write_lines(p / "k.txt", range(N + 1))}),
        r"^--keys: .*k.txt has 25 keys for 24 rows$",
    ),
    "duplicate keys": (_dupe_keys, r"^--keys: .*k.txt: key 'k3' is on rows 3 and 7$"),
    "integer values": (
        lambda p: (_npy(p, np.ones((N, D), np.int64)), {}),
        r"^--input: .*x.npy holds int64 values; representations must be floating point",
    ),
    "per-token states without a token choice": (
        _per_token_without_choice,
        r"^--input: hidden state 0 of .*h.pt is \[24, 5, 8\]; each must be \[N, D\] \(per-token "
        r"states: choose each row's token with --position=last or --token_mask\)$",
    ),
    "layer out of range": (
        lambda p: (_npy(p, _points()), {"layers": "0,3"}),
        r"^--layers: 3 is not in \[0, 3\): the input has 3 hidden states$",
    ),
    "array not in the file": (
        lambda p: (np.savez(p / "x.npz", a=_points()) or p / "x.npz", {"array": "b"}),
        r"^--array: 'b' is not in .*x.npz; it holds a$",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_in_one_line_before_anything_is_written(tmp_path, case):
    make, pattern = BAD[case]
    source, kw = make(tmp_path)
    out = tmp_path / "out"
    with run_helpers.raises_user_error(pattern) as info:
        importer.import_representations(str(source), str(out), **kw)
    assert "\n" not in run_flags.message(info.value)
    assert not out.exists()


def test_without_the_datasets_package_one_line_names_it(tmp_path, monkeypatch):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with run_helpers.raises_user_error(
        r"^--input: .*/ds is a saved Hugging Face dataset: reading it needs the datasets "
        r"package \(pip install datasets\)$"
    ):
        importer.import_representations(str(tmp_path / "ds"), str(tmp_path / "out"), column="h")
    assert not (tmp_path / "out").exists()


def test_a_folder_that_holds_files_is_not_overwritten(tmp_path):
    np.save(tmp_path / "x.npy", _points())
    out, _ = _import(tmp_path, tmp_path / "x.npy")
    before = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)}
    with run_helpers.raises_user_error(r"^--output_dir=.* already holds files"):
        importer.import_representations(str(tmp_path / "x.npy"), out)
    assert {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)} == before


# The command line: torch only for a torch file; errors as one line.


def _cli(*args):
    wrapper = (
        "import atexit, runpy, sys; "
        "atexit.register(lambda: print('TORCH', 'blocked' if 'torch' in sys.modules and "
        "sys.modules['torch'] is None else 'imported' if 'torch' in sys.modules else 'absent')); "
        f"sys.argv = {[SCRIPT, *args]!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=300
    )


def test_command_line(tmp_path):
    np.save(tmp_path / "x.npy", _points())
    proc = _cli(f"--input={tmp_path / 'x.npy'}", f"--output_dir={tmp_path / 'a'}", "--layers=7")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --layers: 7 is not in [0, 3): the input has 3 hidden states"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "a").exists()
    assert "TORCH blocked" in proc.stdout  # cli.without_torch: torch cannot be imported
    torch.save(tuple(torch.from_numpy(h) for h in _points()), tmp_path / "h.pt")
    proc = _cli(f"--input={tmp_path / 'h.pt'}", f"--output_dir={tmp_path / 'b'}", "--layers=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Imported 24 rows x 1 hidden states x 8" in proc.stdout
    assert "TORCH imported" in proc.stdout  # but to read a torch file
    np.testing.assert_array_equal(_stored(tmp_path / "b"), _points()[1:2])
    meta = json.loads((tmp_path / "b" / results.METADATA_FILE).read_text())
    assert meta["imported"]["format"] == "torch"
