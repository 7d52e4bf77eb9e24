"""The pinned outputs under a second XLA:CPU code generation on the same machine.

The goldens in tests/fixtures were written on one processor; a user's differs
in vector width and matmul kernels, so the last bits of every float32
reduction move. Running the pinned computations in a subprocess with
``--xla_cpu_max_isa=SSE4_2`` (or, when the suite already runs so, without
it) stands in for that second processor here: its outputs must agree with
this process's and with the goldens at the tolerances of tests/tolerances.py,
so a golden compared bit for bit fails on the developers' machine, before it
reaches a user.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pinned_outputs
import tolerances

from benchmarks import reference as oracle

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ISA_FLAG = re.compile(r"--xla_cpu_max_isa=\S+")


def _other_isa_flags(flags):
    """XLA_FLAGS for the other code generation: this run's flags with
    --xla_cpu_max_isa=SSE4_2 added, or with a max_isa this run has taken out."""
    if ISA_FLAG.search(flags):
        return ISA_FLAG.sub("", flags).strip()
    return f"{flags} --xla_cpu_max_isa=SSE4_2".strip()


def _field(key):
    return key.rsplit("/", 1)[-1]


def test_other_instruction_set_within_the_stated_tolerances(tmp_path):
    out = tmp_path / "other_isa.npz"
    env = dict(
        os.environ,
        XLA_FLAGS=_other_isa_flags(os.environ.get("XLA_FLAGS", "")),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    log = tmp_path / "other_isa.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "pinned_outputs.py"), str(out)],
            env=env,
            stdout=err,
            stderr=subprocess.STDOUT,
        )
        try:
            here = pinned_outputs.pinned()  # meanwhile, this run's code generation
            proc.wait(timeout=900)  # ~40 s alone; far more under load
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, log.read_text()[-4000:]
    with np.load(out) as z:
        other = dict(z)
    gold = pinned_outputs.goldens()
    assert set(here) == set(gold) and set(other) - set(gold) == {
        f"entropy:alpha={a}" for a in pinned_outputs.ENTROPY_ALPHAS
    }
    for key, want in gold.items():
        field, atol = _field(key), pinned_outputs.golden_atol(key)
        tolerances.assert_matches_golden(other[key], want, field, f"{key} (other ISA) ", atol)
        tolerances.assert_matches_golden(here[key], want, field, f"{key} (this run) ", atol)
        tolerances.assert_matches_golden(
            other[key], here[key], field, f"{key} (other vs this) ", atol
        )
    # The check has teeth: the two code generations do differ in the last bits, so a
    # golden compared bit for bit fails here.
    moved = sorted(k for k in gold if not np.array_equal(other[k], here[k]))
    assert len(moved) >= 1, "both code generations gave bit-identical outputs"
    exact = [k for k in moved if tolerances.GOLDEN[_field(k)].rtol == 0]
    assert not [k for k in exact if not np.any(pinned_outputs.golden_atol(k))], exact

    x, mask = pinned_outputs.oracle_batch()
    for alpha in pinned_outputs.ENTROPY_ALPHAS:
        got = other[f"entropy:alpha={alpha}"]
        for b in range(x.shape[0]):
            np.testing.assert_allclose(
                got[b],
                oracle.matrix_entropy(x[b], alpha, mask[b]),
                rtol=tolerances.matrix_entropy_rtol(oracle.cosine_spectrum(x[b], mask[b]), alpha),
                err_msg=f"alpha={alpha}, cloud {b}, other ISA",
            )
