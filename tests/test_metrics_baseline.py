"""The paper column (benchmarks/paper.py) agrees with the float64 reference and JAX."""

import numpy as np
from helpers import tolerances
from reference import oracle

from benchmarks import paper
from geom_jax import metrics


def test_baseline_matches_oracle_and_jax():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((150, 3))
    layers = [
        np.tanh(z @ rng.standard_normal((3, 16))) + 0.01 * rng.standard_normal((150, 16))
        for _ in range(3)
    ]
    hidden = np.stack(layers).astype(np.float32)
    hidden[0, 20] = hidden[0, 7]  # a duplicate for the ID estimators to drop
    out = paper.paper_layer_geometry(hidden, range_max=32, max_k=8)
    # Every stage's timer ran (the benchmark reports them); how long they took is not
    # asserted: no speed claim in a unit test.
    assert set(out["times"]) == set(paper.STAGES)
    assert all(t > 0 for t in out["times"].values()), out["times"]
    for layer in range(3):
        ids, errs, scales = oracle.gride(hidden[layer], 32)
        np.testing.assert_allclose(out["gride_ids"][layer], ids, rtol=1e-5)
        np.testing.assert_allclose(out["gride_errs"][layer], errs, rtol=1e-5)
        np.testing.assert_allclose(out["gride_scales"][layer], scales, rtol=1e-5)
        np.testing.assert_allclose(out["twonn"][layer], oracle.twonn(hidden[layer]), rtol=1e-5)
        np.testing.assert_allclose(
            [out["cos_mean"][layer], out["cos_std"][layer]],
            oracle.cosine_stats(hidden[layer]),
            atol=1e-6,
        )
    # chi_k: one step per neighbour pair float32 cannot order (tolerances.overlap_atol)
    # the paper's code sorts with np.argsort's default (not stable): the duplicate's two
    # copies tie exactly and may come in either order (the order follows NumPy's SIMD level)
    chi_atol = tolerances.overlap_atol(hidden[None], None, 8, index_ties=False)[0]
    for layer in range(2):
        want = oracle.overlap(hidden[layer], hidden[layer + 1], 8)
        tolerances.assert_rank_field(out["overlap"][layer], want, "overlap", chi_atol[layer])
    geo = metrics.layer_geometry(hidden, range_max=32, max_k=8)
    np.testing.assert_allclose(geo.gride_ids, out["gride_ids"], rtol=1e-4)
    np.testing.assert_allclose(geo.twonn, out["twonn"], rtol=1e-4)
    tolerances.assert_rank_field(geo.overlap, out["overlap"], "overlap", chi_atol, "jax vs paper: ")
    np.testing.assert_allclose(geo.cos_mean, out["cos_mean"], atol=1e-5)


def test_benchmark_refuses_sizes_before_loading_anything():
    """--max_tokens too small for --range_max is a one-line flag error, not a
    traceback after minutes of loading."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.benchmark_torch",
            "--max_tokens=256",
            "--range_max=256",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        cwd=root,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: range_max=256 with N = 256")
    assert "Traceback" not in proc.stderr
