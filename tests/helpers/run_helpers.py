"""Shared by the tests that run whole experiments on the tiny model."""

import contextlib
import os
import re
import signal
import subprocess
import time

import pytest

from geom_jax import run as geom_run
from geom_jax.run import flags as run_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "experiments", "token_geometry.py")
PLOT_SCRIPT = os.path.join(ROOT, "experiments", "plot_geometry.py")


def small_spec(model, out, **kw):
    """A RunSpec sized for the tiny model (32 tokens, GRIDE range 16, k = 8, no
    progress bar); ``kw`` sets or overrides any field.

    Clouds of 32 tokens take the XLA selection path (fewer than
    metrics.neighbours.host_selection.AUTO_HOST_MIN_POINTS points), whose steps the suite's
    persistent compilation cache holds: a later run of the same shapes, in this
    process or a command-line subprocess, loads them instead of compiling."""
    base = dict(
        output_dir=str(out),
        model=model,
        max_tokens=32,
        range_max=16,
        max_k=8,
        progress=False,
    )
    base.update(kw)
    return geom_run.RunSpec(**base)


@contextlib.contextmanager
def raises_user_error(pattern):
    """A run refused with a UserError whose command-line rendering (arguments as
    --flags, what token_geometry.py prints) matches ``pattern``."""
    with pytest.raises(geom_run.UserError) as info:
        yield info
    text = run_flags.message(info.value)
    assert re.search(pattern, text), text


def wait_while_running(done, procs, timeout=300):
    """Polls ``done()`` until it is true, asserting every process of ``procs`` still runs
    (a run that ended before the moment it was to be killed at fails the test)."""
    deadline = time.time() + timeout
    while time.time() < deadline and not done():
        assert all(p.poll() is None for p in procs), "a process ended before the kill"
        time.sleep(0.02)


def kill_second_then_first(procs, grace=5):
    """SIGKILL of process 1 of a two-process run; process 0, whose collectives now fail,
    gets ``grace`` seconds to exit on its own before it is killed too."""
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    try:
        procs[0].wait(timeout=grace)
    except subprocess.TimeoutExpired:
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
