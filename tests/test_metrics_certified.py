"""Certified neighbour lists: the Gram order is kept only where it is provably the
exact order, and the result equals full exact re-ranking (refinement.rerank_candidates)."""

import jax
import numpy as np
import pytest

from geom_jax.metrics.neighbours import distances, refinement, selection

K = 8
M = K + refinement.REFINE_MARGIN


@jax.jit
def _both(x, valid):
    gram, _ = distances.centred_gram(x, valid)
    near, _ = selection.select_neighbours(gram, valid, k_near=M, method="host")
    full_sq, full_idx = refinement.rerank_candidates(x, near, valid, K, "host")
    cert = refinement.certified_knn(x, gram, near, valid, K, "host")
    return full_sq, full_idx, cert.idx, cert.sq_at(range(K)), cert.flagged


def _shells(n_clouds=3, n=400, d=48, delta=3e-7, seed=0):
    """Clouds whose points sit on thin shells around a few centres: neighbour
    distances differ by ~delta relative, below the Gram matrix's float32 error."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_clouds, n, d), np.float32)
    for c in range(n_clouds):
        centres = rng.standard_normal((n // 40, d)) * 10.0
        dirs = rng.standard_normal((n, d))
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        radius = 1.0 + delta * rng.integers(0, 50, n)
        out[c] = centres[np.arange(n) % len(centres)] + dirs * radius[:, None] + 100.0
        out[c, : len(centres)] = centres + 100.0  # each centre itself: a row of near-ties
    return out


def _lattice(n=600, d=6):
    """Integer lattice points: exact ties in every row (every row is re-ranked,
    in several rounds of REFINE_ROUND rows)."""
    rng = np.random.default_rng(1)
    return rng.integers(0, 5, (2, n, d)).astype(np.float32)


@pytest.mark.parametrize("name", ["shells", "lattice", "random"])
def test_certified_lists_equal_exact_reranking(name):
    x = {
        "shells": _shells(),
        "lattice": _lattice(),
        "random": np.random.default_rng(2).standard_normal((2, 300, 32)).astype(np.float32),
    }[name]
    valid = np.ones(x.shape[:-1], bool)
    valid[0, 5::7] = False
    full_sq, full_idx, idx, sq, flagged = (np.asarray(a) for a in _both(x, valid))
    np.testing.assert_array_equal(idx[valid], full_idx[valid])
    np.testing.assert_array_equal(sq[valid], full_sq[valid])
    assert (idx[~valid] == -1).all() and np.isinf(sq[~valid]).all()
    if name == "shells":
        # the shells' centres have near-tied neighbours: they must be re-ranked
        assert flagged[:, :10][valid[:, :10]].all()
    if name == "lattice":
        assert flagged.sum() > refinement.REFINE_ROUND  # several rounds ran
    if name == "random":
        assert flagged.mean() < 0.2


def test_gram_order_alone_is_wrong_on_near_ties():
    """Without re-ranking (all rows kept in Gram order) the shells' lists differ:
    the test above would catch a certification that keeps too much."""
    x = _shells()
    valid = np.ones(x.shape[:-1], bool)

    @jax.jit
    def gram_order(x, valid):
        gram, _ = distances.centred_gram(x, valid)
        near, _ = selection.select_neighbours(gram, valid, k_near=M, method="host")
        return near[..., :K]

    full = np.asarray(_both(x, valid)[1])
    assert (np.asarray(gram_order(x, valid)) != full).any(axis=-1).sum() > 10


def test_rows_short_of_valid_candidates():
    """A cloud with fewer valid points than candidates gives -1 / +inf past them."""
    x = np.random.default_rng(3).standard_normal((1, 40, 8)).astype(np.float32)
    valid = np.zeros((1, 40), bool)
    valid[0, :8] = True
    full_sq, full_idx, idx, sq, flagged = (np.asarray(a) for a in _both(x, valid))
    np.testing.assert_array_equal(idx[valid], full_idx[valid])
    np.testing.assert_array_equal(sq[valid], full_sq[valid])
    assert (idx[~valid] == -1).all()
    assert (idx[0, :8, -1] == -1).all() and np.isinf(sq[0, :8, -1]).all()
    assert (idx[0, :8, :-1] >= 0).all() and flagged[0, :8].all()
