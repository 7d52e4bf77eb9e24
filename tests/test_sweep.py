"""The resumable sweep runner on a toy step (no model)."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geom_jax.run import sweep


def _plan(num_rows, crash_at_row=None):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, size=(num_rows, 16)).astype(np.int32)
    calls = []

    def make_batch(rows):
        calls.append(rows.copy())
        if crash_at_row is not None and crash_at_row in rows:
            raise KeyboardInterrupt("simulated crash")
        return ids[rows], np.ones((len(rows), 16), np.int32)

    plan = sweep.SweepPlan(np.arange(num_rows), np.zeros(num_rows, np.int32), make_batch)
    return plan, ids, calls


@jax.jit
def _step(ids, mask):
    x = ids.astype(jnp.float32)
    return {"mean": x.mean(-1), "prefix": jnp.cumsum(x, -1)[:, :4] * mask[:, :4]}


def test_sweep_fills_every_row_in_order(tmp_path):
    plan, ids, _ = _plan(11)
    store = sweep.run_sweep(
        plan, _step, batch_size=4, checkpoint_dir=str(tmp_path / "ck"), resume=False, progress=False
    )
    assert store.done.all()
    np.testing.assert_allclose(store.arrays["mean"], ids.mean(-1), rtol=1e-6)
    np.testing.assert_allclose(store.arrays["prefix"], np.cumsum(ids, -1)[:, :4], rtol=1e-6)


def test_sweep_resume_after_crash_computes_each_row_once(tmp_path):
    ck = str(tmp_path / "ck")
    plan, ids, _ = _plan(23, crash_at_row=10)  # dies preparing batch 5 (rows 10, 11)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(
            plan,
            _step,
            batch_size=2,
            checkpoint_dir=ck,
            resume=False,
            checkpoint_every=2,
            progress=False,
        )
    plan2, _, calls2 = _plan(23)
    store = sweep.run_sweep(
        plan2,
        _step,
        batch_size=2,
        checkpoint_dir=ck,
        resume=True,
        checkpoint_every=2,
        progress=False,
    )
    assert store.done.all()
    np.testing.assert_allclose(store.arrays["mean"], ids.mean(-1), rtol=1e-6)
    # Saved after batches 2 and 4 (rows 0-7); batch 5 (rows 8, 9) was lost with the crash.
    recomputed = np.concatenate(calls2[1:])  # calls2[0] only traces the step's shapes
    assert sorted(set(recomputed.tolist())) == list(range(8, 23))
    assert len(recomputed) == 16  # 15 rows, the last batch padded by repeating row 22


def test_resume_refuses_checkpoint_of_other_shape(tmp_path):
    ck = str(tmp_path / "ck")
    plan, _, _ = _plan(6)
    sweep.run_sweep(plan, _step, batch_size=2, checkpoint_dir=ck, resume=False, progress=False)
    plan7, _, _ = _plan(7)
    with pytest.raises(ValueError, match="checkpoint field 'done' has shape"):
        sweep.run_sweep(plan7, _step, batch_size=2, checkpoint_dir=ck, resume=True, progress=False)


def test_ctrl_c_during_a_checkpoint_save_is_raised_after_it():
    """A SIGINT inside sweep.deferred_interrupt (what Checkpointer.save runs in) does
    not interrupt the block; KeyboardInterrupt comes once it is done."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # SIG_IGN in `make test &`
    try:
        steps = []
        with pytest.raises(KeyboardInterrupt):
            with sweep.deferred_interrupt():
                os.kill(os.getpid(), signal.SIGINT)
                steps.append("after the signal")
                steps.append("committed")
        assert steps == ["after the signal", "committed"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)
