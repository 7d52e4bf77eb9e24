"""Representational similarity (mutual k-NN, CKNNA, CKA, layer_similarity) against the
float64 transcriptions in tests/reference/oracle.py.

Tolerances: mutual_knn and CKNNA follow the neighbour lists, so they compare at the
rank rules of tests/helpers/tolerances.py (mutual_knn_atol: one shared neighbour, 1 / (N k),
per swap of list members float32 cannot order by inner product; cknna_atol: the
bound on the kernel sums such swaps can move), from each test's points: 0 where the
lists have no near-ties, and then the comparison is exact up to the rounding of the
counts (mutual_knn) or of sums over the N k listed pairs of float32 inner products
(CKNNA, 1e-6). CKA 1e-5: float32 sums of N^2 kernel products or Dx Dy feature
products.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tolerances
from reference import oracle

from geom_jax import metrics
from geom_jax.metrics.similarity import cka_hsic, knn_alignment

CKA_TOL = 1e-5
RANK_RULES = {"mutual_knn": tolerances.mutual_knn_atol, "cknna": tolerances.cknna_atol}


def curved_pair(rng, n, dx, dy, duplicates=0):
    """Two nonlinear views (dims dx, dy) of one 5-d latent cloud, with offsets; the
    last `duplicates` rows copy earlier ones in both views."""
    z = rng.standard_normal((n, 5))
    x = np.tanh(z @ rng.standard_normal((5, dx))) + 0.1 * rng.standard_normal((n, dx)) + 3.0
    y = np.sin(z @ rng.standard_normal((5, dy))) + 0.1 * rng.standard_normal((n, dy)) - 2.0
    if duplicates:
        src = rng.integers(0, n - duplicates, duplicates)
        x[n - duplicates :] = x[src]
        y[n - duplicates :] = y[src]
    return x.astype(np.float32), y.astype(np.float32)


CASES = {
    # name: (N, Dx, Dy, duplicates, k)
    "small_random": (50, 7, 30, 0, 5),
    "curved_duplicates": (300, 24, 9, 25, 10),
    "high_dim": (120, 500, 600, 0, 10),
}


def check_against_reference(out, x, y, k, mask, dense=True):
    """out: dict measure -> [B, ...] (one value per batch element / mask row)."""
    for b, m in enumerate(mask):
        want = {
            "mutual_knn": oracle.mutual_knn(x, y, k, m),
            "cknna": oracle.cknna(x, y, k, m, dense=dense),
            "cka": oracle.cka(x, y, m),
            "cka_debiased": oracle.cka(x, y, m, debiased=True),
        }
        for name, value in out.items():
            got = float(np.ravel(value[b])[0])
            if name in RANK_RULES:
                atol = RANK_RULES[name](x, y, k, m)
                tolerances.assert_rank_field(got, want[name], name, atol, f"{b}: ")
            else:
                assert abs(got - want[name]) < CKA_TOL, (name, b, got, want[name])


@pytest.mark.parametrize("case", sorted(CASES))
def test_measures_match_float64_reference(case):
    """All four measures with and without a mask (a batch of two); the automatic CKA
    route is "features" for curved_duplicates and "kernels" for the other two."""
    n, dx, dy, dups, k = CASES[case]
    rng = np.random.default_rng(sorted(CASES).index(case))
    x, y = curved_pair(rng, n, dx, dy, dups)
    mask = np.ones((2, n), bool)
    mask[1, rng.choice(n, n // 7, replace=False)] = False
    out = metrics.layer_similarity(np.stack([x, x])[:, None], np.stack([y, y])[:, None], mask, k=k)
    check_against_reference(out, x, y, k, mask)
    route = cka_hsic.pick_route("auto", n, 1, dx, 1, dy, False)
    assert route == ("features" if case == "curved_duplicates" else "kernels")


def test_large_cloud_matches_float64_reference():
    """N = 5,000, Dx = 40, Dy = 24, duplicates and a mask (CKNNA's reference on sparse
    matrices; the dense one is the same number, test_reference_cknna_sparse_is_dense)."""
    rng = np.random.default_rng(50)
    x, y = curved_pair(rng, 5000, 40, 24, duplicates=40)
    mask = np.ones((1, 5000), bool)
    mask[0, rng.choice(5000, 300, replace=False)] = False
    out = metrics.layer_similarity(x[None, None], y[None, None], mask, k=10)
    check_against_reference(out, x, y, 10, mask, dense=False)


def test_llm_states_match_float64_reference():
    """SmolLM2 last-token states of 2,000 windows (576 dims, 5 pairs of identical rows):
    hidden-state layers 24 against 8 (clouds_reference.npz)."""
    points = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "clouds_reference.npz"))[
        "smollm2_last_token/points"
    ]
    x, y = points[2], points[0]
    out = metrics.layer_similarity(x[None, None], y[None, None], k=10)
    check_against_reference(out, x, y, 10, np.ones((1, len(x)), bool), dense=False)


def test_reference_cknna_sparse_is_dense():
    x, y = curved_pair(np.random.default_rng(3), 200, 12, 5, duplicates=10)
    valid = np.arange(200) % 9 != 0
    dense = oracle.cknna(x, y, 6, valid)
    sparse = oracle.cknna(x, y, 6, valid, dense=False)
    # the same float64 lists on both sides (rank rule 0): float64 rounding only
    tolerances.assert_rank_field(sparse, dense, "cknna", 0.0, round_atol=1e-12)


def test_duplicates_tie_to_the_lower_index():
    """A point with three exact copies (in raw features) lists the lowest-index copies;
    a scaled copy has the same direction, so it ties too."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    x[[11, 25, 31]] = x[3]
    x[8] = 2.0 * x[3]
    idx, kv, rec, zero = knn_alignment.layer_lists(x[None], np.ones((1, 40), bool), 3, "auto")
    assert idx[0, 3].tolist() == [8, 11, 25]
    assert idx[0, 31].tolist() == [3, 8, 11]
    np.testing.assert_allclose(kv[0, 3], 1.0, atol=1e-6)
    assert bool(rec[0, 3, 1]) and not bool(zero[0])


@pytest.fixture(scope="module")
def stacks():
    rng = np.random.default_rng(11)
    n = 160
    base = rng.standard_normal((n, 6))
    a = np.stack(
        [
            np.tanh(base @ rng.standard_normal((6, 16)) * (1 + layer))
            + 0.1 * rng.standard_normal((n, 16))
            for layer in range(4)
        ]
    ).astype(np.float32)
    b = np.stack([np.sin(base @ rng.standard_normal((6, 9))) for _ in range(3)]).astype(np.float32)
    mask = np.ones(n, bool)
    mask[-25:] = False
    a[:, -25:] = 1e3  # padding garbage
    return a, b, mask


PAIR_FUNCTIONS = {
    "mutual_knn": lambda x, y, m: metrics.mutual_knn(x, y, m, k=8),
    "cknna": lambda x, y, m: metrics.cknna(x, y, m, k=8),
    "cka": lambda x, y, m: metrics.cka(x, y, m),
    "cka_debiased": lambda x, y, m: metrics.cka(x, y, m, debiased=True),
}


def test_layer_similarity_with_itself_and_equal_to_pairs(stacks):
    a, _, mask = stacks
    out = metrics.layer_similarity(a, None, mask, k=8)
    assert sorted(out) == sorted(PAIR_FUNCTIONS)
    # a layer against itself: the same float32 lists on both sides, 1 whatever the
    # near-ties (atol 0)
    tolerances.assert_rank_field(np.diag(out["mutual_knn"]), np.ones(4), "mutual_knn", 0.0)
    for name in ("cka", "cka_debiased"):
        np.testing.assert_allclose(np.diag(out[name]), 1.0, atol=1e-6, err_msg=name)
    for name in ("cka", "cka_debiased"):
        v = np.asarray(out[name])
        assert np.array_equal(v, v.T), name
    # CKNNA's diagonal is HSIC / (HSIC + 1e-6): just below 1.
    assert np.all(np.diag(out["cknna"]) < 1.0) and np.all(np.diag(out["cknna"]) > 0.99)
    again = metrics.layer_similarity(a, a, mask, k=8)
    # the rank fields at their rules (pairs by pair functions and by the stack's lists)
    rank_atol = {
        "mutual_knn": tolerances.mutual_knn_matrix_atol(a, a, 8, mask),
        "cknna": np.array([[tolerances.cknna_atol(p, q, 8, mask) for q in a] for p in a]),
    }
    for name, fn in PAIR_FUNCTIONS.items():
        per = np.array([[float(fn(a[i], a[j], mask)) for j in range(4)] for i in range(4)])
        for got in (out[name], again[name]):
            if name in rank_atol:
                rule = "mutual_knn_matrix" if name == "mutual_knn" else name
                tolerances.assert_rank_field(got, per, rule, rank_atol[name], "stack vs pairs: ")
            else:
                np.testing.assert_allclose(got, per, atol=1e-6, rtol=0, err_msg=name)


def test_layer_similarity_two_stacks_batched(stacks):
    """Da != Db, a batch of two stacks with different masks: every pair against the
    float64 references."""
    a, b, mask = stacks
    masks = np.stack([mask, np.roll(mask, 40)])
    batch = np.stack([a, a[::-1]])
    out = metrics.layer_similarity(batch, np.stack([b, b]), masks, k=8)
    for name in PAIR_FUNCTIONS:
        assert out[name].shape == (2, 4, 3)
    for i in range(2):
        for la in range(4):
            for lb in range(3):
                pair = {name: v[i : i + 1, la, lb] for name, v in out.items()}
                check_against_reference(pair, batch[i, la], b[lb], 8, masks[i : i + 1])


def test_kernel_blocks_equal_feature_route(monkeypatch):
    """Several kernel blocks, the last one partial and shifted back: same S as features."""
    monkeypatch.setattr(cka_hsic, "KERNEL_BLOCK_BYTES", 4 * 3 * 37 * 37)
    rng = np.random.default_rng(5)
    xa = rng.standard_normal((2, 100, 5)).astype(np.float32)
    xb = rng.standard_normal((1, 100, 3)).astype(np.float32)
    assert cka_hsic.block_size(100, 3) == 37
    for pair in ((xa, xb), (xa, None)):
        got = cka_hsic.squared_norms(*pair, "kernels")
        want = cka_hsic.squared_norms(*pair, "features")
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5)


def test_auto_route_takes_the_cheaper():
    assert cka_hsic.pick_route("auto", 5000, 31, 576, 31, 576, True) == "kernels"
    assert cka_hsic.pick_route("auto", 5000, 1, 64, 1, 48, False) == "features"
    assert cka_hsic.pick_route("auto", 100, 1, 500, 1, 600, False) == "kernels"


def test_jit_and_zero_vectors(stacks):
    a, _, mask = stacks
    x, y = a[0].copy(), a[1]
    mask = mask.copy()
    jitted = jax.jit(lambda p, q, m: metrics.cknna(p, q, m, k=8))
    eager = float(metrics.cknna(x, y, mask, k=8))
    # two float32 paths: the rank rule and a float32 rounding (1e-7)
    atol = tolerances.cknna_atol(x, y, 8, mask)
    tolerances.assert_rank_field(float(jitted(x, y, mask)), eager, "cknna", atol, round_atol=1e-7)
    x[4] = 0.0
    assert np.isnan(float(jitted(x, y, mask)))
    with pytest.raises(ValueError, match="zero vector at valid point 4"):
        metrics.cknna(x, y, mask, k=8)
    mask[4] = False
    assert np.isfinite(float(metrics.cknna(x, y, mask, k=8)))
    assert np.isfinite(float(jitted(x, y, mask)))


BAD = {
    "few_valid": (
        lambda x, y: metrics.mutual_knn(x, y, np.arange(30) < 8, k=10),
        "k=10 needs >= 11 valid points, but cloud \\(\\) has 8",
    ),
    "k_below_2_cknna": (lambda x, y: metrics.cknna(x, y, k=1), "k must be an integer >= 2"),
    "unbiased_cka_n3": (
        lambda x, y: metrics.cka(x[:3], y[:3], debiased=True),
        "needs >= 4 points per cloud, got N = 3",
    ),
    "unbiased_cka_mask": (
        lambda x, y: metrics.cka(x, y, np.arange(30) < 3, debiased=True),
        "needs >= 4 valid points",
    ),
    "different_n": (lambda x, y: metrics.cka(x, y[:20]), "must hold the same N points"),
    "mask_shape": (lambda x, y: metrics.mutual_knn(x, y, np.ones(29, bool)), "mask must have"),
    "unknown_measure": (
        lambda x, y: metrics.layer_similarity(x[None], y[None], measures=("procrustez",)),
        "measures: unknown measure 'procrustez'; known: mutual_knn, cknna",
    ),
    "stack_rank": (lambda x, y: metrics.layer_similarity(x, y), "stack_a must have rank >= 3"),
    "route": (lambda x, y: metrics.cka(x, y, route="dense"), "route must be one of"),
    "kernel": (lambda x, y: metrics.cka(x, y, kernel="poly"), "kernel must be 'linear' or 'rbf'"),
    "clamp": (
        lambda x, y: metrics.layer_similarity(x[None], y[None], clamp=1.5),
        "clamp must be a number in \\(0, 1\\], got 1.5",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_before_compute(case):
    rng = np.random.default_rng(1)
    x, y = curved_pair(rng, 30, 6, 4)
    fn, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        fn(x, y)


def test_rbf_kernel_and_clamp_are_the_measures_they_name():
    rng = np.random.default_rng(3)
    x, y = curved_pair(rng, 40, 6, 4)
    x[5, 2] = 40.0  # an outlier coordinate, which the clamp bounds
    got = float(metrics.cka(x, y, kernel="rbf", sigma=0.5, debiased=True))
    assert got == float(
        metrics.layer_similarity(x[None], y[None], measures=("cka_rbf",), sigma=0.5, debiased=True)[
            "cka_rbf"
        ][0, 0]
    )
    assert got != float(metrics.cka(x, y, debiased=True))
    clamped = metrics.layer_similarity(x[None], y[None], measures=("cka",), clamp=0.9)["cka"]
    want = metrics.cka(metrics.clamp_outliers(x, q=0.9), metrics.clamp_outliers(y, q=0.9))
    np.testing.assert_allclose(clamped[0, 0], want, atol=1e-6)
    assert abs(float(clamped[0, 0]) - float(metrics.cka(x, y))) > 1e-3


def test_both_cka_estimators_share_one_kernel_pass(monkeypatch):
    """cka and cka_debiased declare the same pair_stats: S is computed once for both."""
    calls = []
    original = cka_hsic.squared_norms
    monkeypatch.setattr(
        cka_hsic, "squared_norms", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    x = np.random.default_rng(5).normal(size=(3, 40, 6)).astype(np.float32)
    out = metrics.layer_similarity(x, measures=("cka", "cka_debiased"))
    assert len(calls) == 1
    np.testing.assert_allclose(out["cka"], metrics.layer_similarity(x, measures=("cka",))["cka"])


def test_lists_above_the_dense_bound_come_from_row_blocks(monkeypatch):
    """Above neighbour_lists.BLOCKED_ABOVE points the similarity and label-overlap
    measures' lists come from blocks of Gram rows (no N x N matrix: the dense kernel is
    made to fail) and equal the dense kernel's: the same indices on a continuous cloud
    with duplicate rows and invalid points; on an integer lattice, where more points tie
    at the k-th distance than either path refines, the same exact distances."""
    from geom_jax.metrics.neighbours import neighbour_lists

    rng = np.random.default_rng(3)
    n = neighbour_lists.BLOCKED_ABOVE + 104
    smooth = rng.standard_normal((n, 6)).astype(np.float32)
    lattice = rng.integers(-3, 4, size=(n, 6)).astype(np.float32)
    x = np.stack([smooth, lattice])
    x[:, 50:60] = x[:, 10:20]
    valid = np.ones((2, n), bool)
    valid[:, rng.choice(n, 200, replace=False)] = False
    lists = lambda: np.asarray(neighbour_lists.neighbour_lists(jnp.asarray(x), valid, 10))
    dense = np.asarray(neighbour_lists._lists(jnp.asarray(x), jnp.asarray(valid), 10, "auto"))

    def no_gram(*a, **kw):
        raise AssertionError("the dense kernel ran")

    monkeypatch.setattr(neighbour_lists.distances, "centred_gram", no_gram)
    got = lists()
    np.testing.assert_array_equal(got[0], dense[0])
    assert (got[valid] >= 0).all() and (got[~valid] == -1).all()
    sq = lambda idx: np.sum((x[1][:, None] - x[1][np.maximum(idx, 0)]) ** 2, axis=-1)
    np.testing.assert_array_equal(sq(got[1])[valid[1]], sq(dense[1])[valid[1]])
