"""representations.zarr (issue 22): chunked float32 store of pooled hidden states,
verified chunk by chunk, resumable after kill -9, readable by zarr-python."""

import logging
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from geom_jax.io import representation_store as rs

ROWS, LAYERS, DIM, CHUNK = 10, 3, 8, 4  # chunks of rows 0-3, 4-7, 8-9
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _values(rows=ROWS, layers=LAYERS, dim=DIM, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, layers, dim)).astype(np.float32)


def _open(path, **kw):
    sizes = dict(rows=ROWS, layers=LAYERS, dim=DIM, chunk_rows=CHUNK) | kw
    return rs.RepresentationStore.open_or_create(str(path), **sizes)


def _fill(store, values):
    for c in range(store.num_chunks):
        a, b = store.chunk_bounds(c)
        store.write_rows(a, values[a:b])


def _tree(path):
    """Relative path -> bytes of every file under ``path``."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, path)] = fh.read()
    return out


def test_write_reopen_read_and_zarr_python(tmp_path):
    path = tmp_path / "representations.zarr"
    values = _values()
    store = _open(path)
    assert store.done_chunks() == [] and store.num_chunks == 3
    store.write_rows(0, values[:8])  # two chunks at once
    assert store.done_chunks() == [0, 1]
    with pytest.raises(ValueError, match=r"rows 8\.\.9 \(chunk 2\) of .* are not written yet"):
        store.read(slice(6, 10))
    store.write_rows(8, values[8:])  # the short last chunk
    again = _open(path)
    assert again.done_chunks() == [0, 1, 2]
    np.testing.assert_array_equal(again.read(), values)
    np.testing.assert_array_equal(again.read([9, 0, 5]), values[[9, 0, 5]])
    np.testing.assert_array_equal(again.read(slice(3, 6)), values[3:6])
    np.testing.assert_array_equal(again.read_layer(2), values[:, 2])
    z = zarr.open(str(path), mode="r")
    assert z.shape == (ROWS, LAYERS, DIM) and z.dtype == np.float32
    np.testing.assert_array_equal(z[:], values)


def test_unwritten_rows_read_nan_in_zarr_and_all_nan_chunks_are_stored(tmp_path):
    path = tmp_path / "r.zarr"
    store = _open(path)
    nan = np.full((CHUNK, LAYERS, DIM), np.nan, np.float32)
    store.write_rows(0, nan)  # equal to the fill value: stored all the same
    assert store.done_chunks() == [0]
    assert np.isnan(zarr.open(str(path), mode="r")[:]).all()


def test_shape_dtype_chunk_mismatch_is_one_line(tmp_path):
    path = tmp_path / "r.zarr"
    _open(path)
    with pytest.raises(ValueError) as e:
        _open(path, rows=11)
    assert str(e.value) == (
        f"representation store {path} holds [10, 3, 8] float32 in chunks of [4, 3, 8], this "
        "run needs [11, 3, 8] float32 in chunks of [4, 3, 8]; remove it or choose another "
        "output folder"
    )
    with pytest.raises(ValueError, match=r"holds .* chunks of \[4, 3, 8\], this run needs .* \[5,"):
        _open(path, chunk_rows=5)
    other = tmp_path / "f16.zarr"
    zarr.create_array(str(other), shape=(10, 3, 8), chunks=(4, 3, 8), dtype="float16")
    with pytest.raises(ValueError, match=r"8\] float16 in .* needs \[10, 3, 8\] float32"):
        _open(other)


def test_bad_writes_are_refused(tmp_path):
    store = _open(tmp_path / "r.zarr")
    values = _values()
    with pytest.raises(ValueError, match="values must be float32, got float64"):
        store.write_rows(0, values[:4].astype(np.float64))
    with pytest.raises(ValueError, match=r"values must be \[n, 3, 8\], got \[4, 3, 7\]"):
        store.write_rows(0, values[:4, :, :7])
    with pytest.raises(ValueError, match="start=2 must be a multiple of chunk_rows=4"):
        store.write_rows(2, values[:4])
    with pytest.raises(ValueError, match="3 rows from row 4 end inside a chunk"):
        store.write_rows(4, values[:3])
    assert store.done_chunks() == []


@pytest.mark.parametrize("damage", ["random_bytes", "truncated", "deleted", "unrecorded"])
def test_damaged_chunk_is_named_and_recomputed(tmp_path, caplog, damage):
    path = tmp_path / "r.zarr"
    values = _values()
    store = _open(path)
    _fill(store, values)
    chunk = os.path.join(str(path), store.chunk_file(1))
    size = os.path.getsize(chunk)
    if damage == "random_bytes":
        with open(chunk, "r+b") as fh:
            fh.seek(17)
            fh.write(bytes(random.Random(0).randrange(256) for _ in range(5)))
        assert os.path.getsize(chunk) == size
    elif damage == "truncated":
        with open(chunk, "r+b") as fh:
            fh.truncate(size - 8)
    elif damage == "deleted":
        os.unlink(chunk)
    else:  # written, hash never recorded: drop its record
        manifest = os.path.join(str(path), rs.MANIFEST)
        record = rs.files.read_json(manifest)
        del record["chunks"]["1"]
        rs.files.write_json(manifest, record)
    store = _open(path)
    with caplog.at_level(logging.WARNING):
        done = store.done_chunks()
    assert done == [0, 2]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"representations: chunk 1 (rows 4..7, {chunk}) ")
    expected = {
        "random_bytes": "does not match its SHA-256",
        "truncated": f"has {size - 8} bytes, {size} were written",
        "deleted": "is missing",
        "unrecorded": "was written but its hash was never recorded",
    }[damage]
    assert expected in line and line.endswith("it is recomputed")
    store.write_rows(4, values[4:8])  # the caller recomputes it
    assert store.done_chunks() == [0, 1, 2]
    np.testing.assert_array_equal(store.read(), values)


WRITER = """
import sys, time
sys.path.insert(0, {repo!r})
import numpy as np
from geom_jax.io import representation_store as rs
store = rs.RepresentationStore.open_or_create(sys.argv[1], rows={rows}, layers=5, dim=64,
                                              chunk_rows=2)
done = set(store.done_chunks())
print("ready", flush=True)
for c in range(store.num_chunks):
    if c not in done:
        a, b = store.chunk_bounds(c)
        v = np.random.default_rng(c).standard_normal((b - a, 5, 64)).astype(np.float32)
        store.write_rows(a, v)
        print(c, flush=True)
        time.sleep(0.05)  # the killer reads each line before the writer runs far ahead
print("finished", flush=True)
"""


def _writer(path, rows):
    script = WRITER.format(repo=REPO, rows=rows)
    return subprocess.Popen(
        [sys.executable, "-c", script, path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_at_random_moments_then_resume_is_byte_identical(tmp_path):
    rows = 61  # 31 chunks, the last one short
    reference = str(tmp_path / "reference.zarr")
    store = rs.RepresentationStore.open_or_create(
        reference, rows=rows, layers=5, dim=64, chunk_rows=2
    )
    chunks = [
        np.random.default_rng(c).standard_normal((b - a, 5, 64)).astype(np.float32)
        for c, (a, b) in enumerate(map(store.chunk_bounds, range(store.num_chunks)))
    ]
    store.write_rows(0, np.concatenate(chunks))  # uninterrupted, in one write
    path = str(tmp_path / "killed.zarr")
    rng = random.Random(time.time_ns())
    done_before = []
    for _ in range(3):
        proc = _writer(path, rows)
        assert proc.stdout.readline() == "ready\n"
        # A random moment within a random chunk's write (or between two writes).
        for _ in range(rng.randint(0, 4)):
            proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.06))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = rs.RepresentationStore.open_or_create(
            path, rows=rows, layers=5, dim=64, chunk_rows=2
        )
        done_before.append(len(killed.check().done))
    proc = _writer(path, rows)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.endswith("finished\n"), err
    # The kills fell mid-run (the writer had chunks left), yet the result is the same.
    assert done_before[-1] < store.num_chunks, done_before
    assert _tree(path) == _tree(reference)


def test_several_writers_then_one_reader_and_the_merge(tmp_path):
    """Issue 31: two writers, each writing its own chunks into its own part of the
    manifest. A reader opened without a writer index (another process count) reads every
    row and counts every chunk done; a chunk whose file changed after its writer recorded
    it is not done, whichever part holds the record; the merge leaves exactly the files
    one writer would have left, byte for byte, keeping per chunk the record its file
    matches (a stale record in another part is dropped)."""
    values = _values()
    single = tmp_path / "single.zarr"
    _fill(_open(single), values)

    path = tmp_path / "two.zarr"
    writers = [_open(path, writer=0), _open(path, writer=1)]
    for c in range(writers[0].num_chunks):
        a, b = writers[0].chunk_bounds(c)
        writers[c % 2].write_rows(a, values[a:b])
    assert not os.path.exists(path / rs.MANIFEST)
    assert sorted(n for n in os.listdir(path) if n.startswith(rs.PART_PREFIX)) == [
        f"{rs.PART_PREFIX}0.json",
        f"{rs.PART_PREFIX}1.json",
    ]
    reader = rs.RepresentationStore.open_existing(str(path))
    assert reader.writer is None and reader.done_chunks() == [0, 1, 2]
    np.testing.assert_array_equal(reader.read(), values)

    # chunk 1 rewritten by writer 0 with other values: writer 1's record of it is stale
    writers[0].write_rows(4, values[4:8] + 1)
    assert reader.done_chunks() == [0, 1, 2]
    writers[0].write_rows(4, values[4:8])
    with open(path / "c/2/0/0", "r+b") as fh:  # damage chunk 2 after writer 0 recorded it
        fh.write(b"\0\0\0\0")
    assert reader.done_chunks() == [0, 1]
    writers[0].write_rows(8, values[8:])
    reader.merge_records()
    assert _tree(path) == _tree(single)
    reader.merge_records()  # no parts: nothing to do
    assert _tree(path) == _tree(single)


def test_writer_must_be_a_process_index(tmp_path):
    with pytest.raises(ValueError, match=r"writer must be None or a process index >= 0, got -1"):
        _open(tmp_path / "s.zarr", writer=-1)
