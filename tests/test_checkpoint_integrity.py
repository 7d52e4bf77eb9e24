"""Damaged checkpoints are detected, named, and skipped (sweep level, toy step)."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geom_jax.io import integrity as checkpoint_integrity
from geom_jax.run import sweep


def _plan(num_rows, crash_at_row=None):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, size=(num_rows, 16)).astype(np.int32)

    def make_batch(rows):
        if crash_at_row is not None and crash_at_row in rows:
            raise KeyboardInterrupt("simulated crash")
        return ids[rows], np.ones((len(rows), 16), np.int32)

    return sweep.SweepPlan(np.arange(num_rows), np.zeros(num_rows, np.int32), make_batch)


@jax.jit
def _step(ids, mask):
    x = ids.astype(jnp.float32)
    return {"mean": x.mean(-1), "prefix": jnp.cumsum(x, -1)[:, :4] * mask[:, :4]}


def _run(ck, num_rows=23, crash_at_row=None, resume=False):
    return sweep.run_sweep(
        _plan(num_rows, crash_at_row),
        _step,
        batch_size=2,
        checkpoint_dir=ck,
        resume=resume,
        checkpoint_every=2,
        progress=False,
    )


def _data_files(step_dir):
    """The array chunks orbax wrote (ocdbt data files), largest first."""
    found = []
    for root, _, files in os.walk(step_dir):
        if os.path.basename(root) == "d":
            found += [os.path.join(root, f) for f in files]
    return sorted(found, key=os.path.getsize, reverse=True)


def _scribble(path):
    data = bytearray(open(path, "rb").read())
    rng = np.random.default_rng(1)
    at = len(data) // 2
    data[at : at + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    open(path, "wb").write(bytes(data))


def _truncate(path):
    os.truncate(path, os.path.getsize(path) // 3)


def _drop_manifest(step_dir):
    os.unlink(os.path.join(step_dir, checkpoint_integrity.MANIFEST))


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda d: _scribble(_data_files(d)[0]), "does not match its SHA-256"),
        (lambda d: _truncate(_data_files(d)[0]), "bytes, "),
        (_drop_manifest, "no integrity record"),
    ],
    ids=["random_bytes", "truncated", "no_manifest"],
)
def test_damaged_latest_checkpoint_falls_back(tmp_path, caplog, damage, named):
    reference = _run(str(tmp_path / "full"))
    ck = str(tmp_path / "ck")
    with pytest.raises(KeyboardInterrupt):
        _run(ck, crash_at_row=10)  # saved steps 1 (rows 0-3) and 2 (rows 0-7)
    assert sweep.Checkpointer(ck).steps() == [2, 1]
    step_dir = os.path.join(ck, "2")
    damaged_file = _data_files(step_dir)[0]
    damage(step_dir)
    with caplog.at_level(logging.WARNING):
        store = _run(ck, resume=True)
    notices = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(notices) == 1, notices
    assert notices[0].startswith(f"checkpoint 2 in {ck} is damaged") and named in notices[0]
    assert "falling back to checkpoint 1" in notices[0]
    if named != "no integrity record":
        assert damaged_file in notices[0]
    for k in reference.arrays:
        np.testing.assert_array_equal(store.arrays[k], reference.arrays[k], err_msg=k)


def test_every_checkpoint_damaged_restarts_from_scratch(tmp_path, caplog):
    ck = str(tmp_path / "ck")
    with pytest.raises(KeyboardInterrupt):
        _run(ck, crash_at_row=10)
    for step in (1, 2):
        _scribble(_data_files(os.path.join(ck, str(step)))[0])
    with caplog.at_level(logging.WARNING):
        store = _run(ck, resume=True)
    notices = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert [n.split(" in ")[0] for n in notices] == ["checkpoint 2", "checkpoint 1"]
    assert notices[-1].endswith("falling back to scratch")
    np.testing.assert_array_equal(store.arrays["mean"], _run(str(tmp_path / "f")).arrays["mean"])


def test_unreadable_checkpoint_with_valid_manifest_falls_back(tmp_path, caplog):
    """A step whose files match the manifest but that orbax cannot read
    (e.g. written by another orbax version) is treated like a damaged one."""
    ck = str(tmp_path / "ck")
    with pytest.raises(KeyboardInterrupt):
        _run(ck, crash_at_row=10)
    step_dir = os.path.join(ck, "2")
    for path in _data_files(step_dir):
        open(path, "wb").write(b"not an array chunk")
    checkpoint_integrity.write_manifest(step_dir)
    with caplog.at_level(logging.WARNING):
        store = _run(ck, resume=True)
    notices = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(notices) == 1 and "cannot be read" in notices[0]
    assert store.done.all()


def test_manifest_detects_each_kind_of_damage(tmp_path):
    folder = tmp_path / "step"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"x" * 100)
    (folder / "sub" / "b.bin").write_bytes(b"y" * 10)
    checkpoint_integrity.write_manifest(str(folder))
    assert checkpoint_integrity.manifest_problem(str(folder)) is None
    (folder / "sub" / "b.bin").write_bytes(b"z" * 10)
    assert "sub/b.bin does not match" in checkpoint_integrity.manifest_problem(str(folder))
    (folder / "sub" / "b.bin").unlink()
    assert "sub/b.bin is missing" in checkpoint_integrity.manifest_problem(str(folder))
