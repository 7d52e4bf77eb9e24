"""The compiled CPU kernels (metrics/neighbours/native) against the NumPy host code they
replace, and the fallback when they cannot be built.

The NumPy functions (selection._host_select, refinement._host_sort) are the reference:
the same keys in the same (key, column) order, so the results must be identical.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geom_jax.metrics.neighbours import native_kernels, refinement, selection

pytestmark = pytest.mark.skipif(
    not native_kernels.available(), reason="no C++ compiler: the native kernels are not built"
)


def _gram(n, d, seed, integer=False):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (3, n, d)) if integer else rng.standard_normal((3, n, d))
    x = x.astype(np.float32)
    x[:, 7] = x[:, 3]  # exact duplicates: equal keys, ties by column
    xc = x - x.mean(axis=1, keepdims=True)
    g = np.einsum("snd,smd->snm", xc, xc).astype(np.float32)
    return g, np.einsum("snn->sn", g).copy()


@pytest.mark.parametrize(
    ("n", "k_near", "ranks", "integer"),
    [
        (1024, 12, (1, 2, 4, 8), False),  # m small: streaming against a threshold
        (1024, 14, tuple(2**i for i in range(10)), False),  # m = 512: one nth_element
        (600, 9, (1, 2, 3, 64), True),  # exact ties everywhere (integer points)
        (40, 5, (), True),
    ],
)
def test_select_rows_equals_numpy(n, k_near, ranks, integer):
    g, sq = _gram(n, 6, n, integer)
    valid_near = np.ones((3, n), bool)
    valid_near[1, ::5] = False
    valid_rank = valid_near.copy()
    valid_rank[2, 1::3] = False  # slab 2: different masks for the list and the ranks
    want = selection._host_select(g, sq, valid_near, valid_rank, k_near=k_near, ranks=ranks)
    got = jax.jit(lambda *a: native_kernels.select_rows(*a, 0, k_near=k_near, ranks=ranks))(
        g, sq, valid_near, valid_rank
    )
    for w, h in zip(want, got):
        np.testing.assert_array_equal(np.asarray(h), w)


SKEWED = r"""
import numpy as np, jax
from geom_jax.metrics.neighbours import native_kernels, selection
rng = np.random.default_rng(0)
n = 1000
x = rng.standard_normal((2, n, 8)) * np.exp(2.0 * rng.standard_normal((2, n, 1)))
x[:, :5] *= 300.0
x = x.astype(np.float32)
xc = x - x.mean(axis=1, keepdims=True)
g = np.einsum("snd,smd->snm", xc, xc).astype(np.float32)
sq = np.einsum("snn->sn", g).copy()
valid = np.ones((2, n), bool)
ranks = tuple(2**i for i in range(10))
want = selection._host_select(g, sq, valid, valid, k_near=10, ranks=ranks)
got = jax.jit(lambda *a: native_kernels.select_rows(*a, 0, k_near=10, ranks=ranks))(
    g, sq, valid, valid)
for w, h in zip(want, got):
    np.testing.assert_array_equal(np.asarray(h), w)
print("EQUAL")
"""


def test_select_rows_of_heavy_tailed_clouds_in_a_fresh_process():
    """Heavy-tailed clouds (log-normal radii, a few massive activations, as some LLM layers
    have) make the bucket pass of a large m recurse below its first level on the first
    rows: the kernel must keep its bucket bounds valid across that recursion (a dangling
    reference crashed a pooled run of SmolLM2 with a persistent compilation cache). In a
    fresh process, freed memory scribbled (MALLOC_PERTURB_), the indices equal NumPy's."""
    env = dict(os.environ, MALLOC_PERTURB_="165")
    proc = subprocess.run([sys.executable, "-c", SKEWED], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "EQUAL" in proc.stdout, proc.stderr[-2000:]


def test_select_rows_of_a_block_excludes_its_own_rows():
    g, sq = _gram(500, 5, 1)
    valid = np.ones(500, bool)
    rows = g[0, 128:256]
    want = selection.host_select_rows(rows, sq[0], valid, valid, 128, k_near=7, ranks=(1, 3))
    got = native_kernels.select_rows(
        jnp.asarray(rows), sq[0], valid, valid, 128, k_near=7, ranks=(1, 3)
    )
    for w, h in zip(want, got):
        np.testing.assert_array_equal(np.asarray(h), w)
    assert not (np.asarray(got[0]) == np.arange(128, 256)[:, None]).any()


def test_sort_rows_equals_numpy():
    rng = np.random.default_rng(2)
    d2 = rng.integers(0, 4, (5, 70, 13)).astype(np.float32)  # many ties
    idx = rng.permutation(np.arange(5 * 70 * 13)).reshape(5, 70, 13).astype(np.int32) % 40
    idx[0, 0, 3] = -1
    want = refinement._host_sort(d2, idx, k=9)
    got = native_kernels.sort_rows(jnp.asarray(d2), jnp.asarray(idx), k=9)
    for w, h in zip(want, got):
        np.testing.assert_array_equal(np.asarray(h), w)


SCRIPT = """
import logging, numpy as np
logging.basicConfig()
from geom_jax import metrics
from geom_jax.metrics.neighbours import native_kernels
x = np.random.default_rng(0).standard_normal((2, 300, 8)).astype(np.float32)
g = metrics.layer_geometry(x, range_max=16, max_k=4, neighbour_path="blocked", block_rows=64)
print("available", native_kernels.available(), float(np.asarray(g.gride_ids)[0, 0]))
"""


@pytest.mark.parametrize("env", [{"GEOM_JAX_NATIVE": "0"}, {"CXX": "false"}])
def test_without_the_kernels_the_numpy_path_gives_the_same_numbers(env, tmp_path):
    base = dict(os.environ, GEOM_JAX_NATIVE_CACHE=str(tmp_path / "cache"))
    out = {}
    for name, extra in (("native", {}), ("numpy", env)):
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            env={**base, **extra},
            capture_output=True,
            text=True,
            check=True,
        )
        out[name] = proc
    assert "available True" in out["native"].stdout
    assert "available False" in out["numpy"].stdout
    if "CXX" in env:
        assert "native CPU kernels unavailable" in out["numpy"].stderr
        assert "compiling" in out["numpy"].stderr
    assert out["native"].stdout.split()[-1] == out["numpy"].stdout.split()[-1]


def test_numpy_keeps_large_m_rows_unless_programs_are_cached():
    """The compiled row selection where it is faster (m a small part of N) and, where
    NumPy's partition is faster (m a large part of N), only with a persistent
    compilation cache on, whose programs a Python callback would keep out of it."""
    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert native_kernels.row_selection_preferred(4096, 36)
        assert not native_kernels.row_selection_preferred(1024, 256)
        jax.config.update("jax_compilation_cache_dir", "/tmp/geom-jax-unused-cache")
        assert native_kernels.row_selection_preferred(1024, 256)
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
