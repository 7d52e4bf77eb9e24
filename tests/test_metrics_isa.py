"""The pinned outputs under every XLA:CPU code generation of this machine.

The goldens in tests/fixtures were written on one processor; a user's differs
in vector width and matmul kernels, so the last bits of every float32
reduction move. Running the pinned computations and the blocked-vs-dense
comparison in subprocesses with ``--xla_cpu_max_isa`` at each instruction set
the processor has besides the suite's own (SSE4_2, AVX2, AVX512; see checked_isas), NumPy's
SIMD dispatch limited alike, stands in for those other processors here: their
outputs must agree with this process's and with the goldens at the tolerances
of tests/helpers/tolerances.py, so a golden compared bit for bit, or a rank-derived
field compared beyond what float32 can order, fails on the developers'
machine before it reaches a user.

The subprocesses run XLA's default code generation, the one users get; the suite
itself runs a faster-compiling one (subprocess_env.SUITE_CODEGEN), so the
processor's own instruction set at XLA's defaults is one of the subprocesses then. Each also
checks that layer chunks change nothing, bit for bit, at its code generation.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import pinned_outputs, subprocess_env, tolerances
from reference import oracle
from test_metrics_blocked import _compare as compare_paths

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ISA_FLAG = re.compile(r"--xla_cpu_max_isa=(\S+)")

ISA_LEVELS = ("SSE4_2", "AVX", "AVX2", "AVX512")
"""XLA:CPU's instruction-set caps, lowest first (4, 8, 8 and 16 float32 lanes)."""

NUMPY_DISABLED = {"SSE4_2": "X86_V3 X86_V4", "AVX": "X86_V3 X86_V4", "AVX2": "X86_V4"}
"""NPY_DISABLE_CPU_FEATURES limiting NumPy's SIMD dispatch (the host selection's
partitions and sorts) to the same level: NumPy 2.4's baseline X86_V2 is SSE4.2,
X86_V3 adds AVX2 and FMA, X86_V4 AVX-512 (it has no AVX-only group)."""


def machine_isa():
    """The highest of ISA_LEVELS this processor runs (from /proc/cpuinfo's flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return "SSE4_2"
    for isa, flag in (("AVX512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx")):
        if flag in flags:
            return isa
    return "SSE4_2"


def suite_isa(flags):
    """The code generation this process runs: its --xla_cpu_max_isa, capped at the machine's."""
    machine = ISA_LEVELS.index(machine_isa())
    m = ISA_FLAG.search(flags)
    cap = ISA_LEVELS.index(m.group(1)) if m and m.group(1) in ISA_LEVELS else machine
    return ISA_LEVELS[min(cap, machine)]


def checked_isas():
    """The ISAs of ISA_LEVELS the subprocesses stand in for other processors with:
    every one the machine runs but AVX where it is not the machine's highest. AVX
    (8 lanes without FMA; Intel up to Ivy Bridge, 2013) lies between SSE4_2 (4
    lanes, no FMA) and AVX2 (8 lanes, FMA), which are run, at a subprocess's cost
    (~75 s of CPU at XLA's defaults)."""
    top = machine_isa()
    return [isa for isa in ISA_LEVELS[: ISA_LEVELS.index(top) + 1] if isa != "AVX" or isa == top]


def other_isas(flags):
    """checked_isas() less the suite's own when the suite runs at XLA's default code
    generation (the subprocesses')."""
    own = suite_isa(flags) if subprocess_env.at_xla_defaults(flags) else None
    return [isa for isa in checked_isas() if isa != own]


def _env(flags, isa):
    rest = subprocess_env.without_codegen(ISA_FLAG.sub("", flags))
    env = dict(
        os.environ,
        XLA_FLAGS=f"{rest} --xla_cpu_max_isa={isa}".strip(),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]),
    )
    env.pop("NPY_DISABLE_CPU_FEATURES", None)
    if NUMPY_DISABLED.get(isa):
        env["NPY_DISABLE_CPU_FEATURES"] = NUMPY_DISABLED[isa]
    return env


def _field(key):
    return key.rsplit("/", 1)[-1]


def test_every_lower_instruction_set_within_the_stated_tolerances(tmp_path):
    """The pinned outputs and the blocked-vs-dense comparison under every instruction
    set this machine can lower its code generation to (NumPy's SIMD dispatch limited
    alike), each in a subprocess, all at once; this process computes its own pinned
    outputs meanwhile."""
    flags = os.environ.get("XLA_FLAGS", "")
    isas = other_isas(flags)
    if not isas:
        pytest.skip("this processor has no other instruction set than the suite's")
    inputs = tmp_path / "inputs.npz"
    pinned_outputs.write_inputs(inputs)
    procs = {}
    for isa in isas:
        log = open(tmp_path / f"{isa}.log", "w")
        cmd = [
            sys.executable,
            os.path.join(HERE, "helpers", "pinned_outputs.py"),
            str(tmp_path / isa),
            inputs,
        ]
        procs[isa] = (subprocess.Popen(cmd, env=_env(flags, isa), stdout=log, stderr=log), log)
    try:
        here = pinned_outputs.pinned()
        for proc, log in procs.values():
            proc.wait(timeout=1200)  # ~60 s alone; far more under load
            log.close()
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
    gold = pinned_outputs.goldens()
    assert set(here) == set(gold)
    moved = set()
    x, mask = pinned_outputs.oracle_batch()
    spectra = [oracle.cosine_spectrum(x[b], mask[b]) for b in range(x.shape[0])]
    for isa in isas:
        assert procs[isa][0].returncode == 0, (tmp_path / f"{isa}.log").read_text()[-4000:]
        with np.load(tmp_path / f"{isa}.npz") as z:
            other = dict(z)
        for key, want in gold.items():
            field, atol = _field(key), pinned_outputs.golden_atol(key)
            where = f"{key} ({isa}) "
            tolerances.assert_matches_golden(other[key], want, field, where, atol)
            tolerances.assert_matches_golden(here[key], want, field, f"{key} (this run) ", atol)
            tolerances.assert_matches_golden(other[key], here[key], field, where + "vs this ", atol)
            if not np.array_equal(other[key], here[key]):
                moved.add(key)
        for f in pinned_outputs.PAPER_FIELDS:  # chunks change nothing at this code generation
            np.testing.assert_array_equal(
                other[f"chunk2/{f}"], other[f"{pinned_outputs.PIN_FILE}:auto/{f}"], err_msg=isa
            )
        compare_paths(
            *(
                {k[len(p) :]: v for k, v in other.items() if k.startswith(p)}
                for p in ("dense/", "blocked/")
            )
        )
        for alpha in pinned_outputs.ENTROPY_ALPHAS:
            got = other[f"entropy:alpha={alpha}"]
            for b in range(x.shape[0]):
                np.testing.assert_allclose(
                    got[b],
                    oracle.matrix_entropy(x[b], alpha, mask[b]),
                    rtol=tolerances.matrix_entropy_rtol(spectra[b], alpha),
                    err_msg=f"alpha={alpha}, cloud {b}, {isa}",
                )
    # The check has teeth: the code generations do differ in the last bits, so a golden
    # compared bit for bit fails here; exact fields moved only within their rank rule.
    assert moved, f"{isas} and this run gave bit-identical outputs"
    exact = [k for k in moved if tolerances.GOLDEN[_field(k)].rtol == 0]
    assert not [k for k in exact if not np.any(pinned_outputs.golden_atol(k))], exact


def test_the_stored_curve_is_numpys_within_one_ulp():
    """The curve's stored points (pinned_outputs.stored_curve) are what NumPy's float32
    cos and sin give from its seed at this process's SIMD level, within one ulp."""
    np.testing.assert_array_max_ulp(
        pinned_outputs.regenerated_curve(), pinned_outputs.stored_curve(), maxulp=1
    )


def test_instruction_sets_of_this_machine():
    """Which code generations the test above runs, from the processor's flags."""
    top = machine_isa()
    assert suite_isa("") == top
    assert suite_isa("--xla_cpu_max_isa=SSE4_2") == "SSE4_2"
    assert suite_isa("--xla_cpu_max_isa=AMX") == top  # a cap above the machine's
    every = checked_isas()
    assert every[0] == "SSE4_2" and every[-1] == top
    assert "AVX" not in every or top == "AVX"
    assert set(every) >= {"AVX2", "AVX512"} & set(ISA_LEVELS[: ISA_LEVELS.index(top) + 1])
    assert other_isas("--foo --xla_cpu_max_isa=SSE4_2") == [i for i in every if i != "SSE4_2"]
    # a suite at its own code generation (tests/conftest.py), or any other than XLA's
    # defaults, adds its own instruction set at the defaults
    fast = " ".join(subprocess_env.SUITE_CODEGEN)
    assert other_isas(fast) == every
    assert other_isas("--xla_cpu_use_fusion_emitters=false") == every
    assert top not in other_isas("--xla_backend_optimization_level=3")
    assert top not in other_isas(
        "--xla_cpu_use_fusion_emitters=true --xla_backend_optimization_level=3"
    )
    assert _env(f"--foo {fast} --xla_cpu_max_isa=AVX2", "AVX")["XLA_FLAGS"] == (
        "--foo --xla_cpu_max_isa=AVX"
    )
    env = _env("--foo --xla_cpu_max_isa=AVX512", "AVX")
    assert env["XLA_FLAGS"] == "--foo --xla_cpu_max_isa=AVX"
    assert env["NPY_DISABLE_CPU_FEATURES"] == "X86_V3 X86_V4"
    assert "NPY_DISABLE_CPU_FEATURES" not in _env("", "AVX512")
