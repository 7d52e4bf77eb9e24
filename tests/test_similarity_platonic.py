"""cycle_knn, lcs_knn, edit_distance_knn, cka_rbf, data_overlap and clamp_outliers against
platonic-rep and DADApy 0.3.4 (tests/fixtures/platonic_reference.npz, written by
tests/reference/platonic_reference.py), and the measures' declarations (masks, leading
axes, all layer pairs, permutations, bad options).

Tolerances:
* the list measures are integer counts over exact neighbour lists divided by m or m k:
  the fixture's points have no neighbours float32 cannot order (the suite's windows,
  tests/helpers/tolerances.py, asserted per test: inner products at every rank 1..k for
  the ordered lists, distances at rank k for the data overlap's sets), so the counts
  must be equal, and the float32 score that count's quotient to ROUNDING (two float32
  roundings); the data overlap goes through the rank rule itself (0 swaps here);
* cka_rbf: RBF_TOL = 1e-6 absolute against HSIC_kl / sqrt(HSIC_kk HSIC_ll) of the three
  HSICs platonic-rep computed (without its 1e-6 in the denominator, which this omits):
  float32 sums of N^2 = 16,384 centred kernel products in a ratio (measured <= 8e-8 at
  sigma 1 and 0.5); below sigma = 0.3 times (0.3 / sigma)^2, as each exponent
  -|u_i - u_j|^2 / (2 sigma^2) carries the float32 error of the squared distance
  (~1e-7) times 1 / (2 sigma^2) (9e-6 at sigma 0.1, measured 5.4e-7);
  two float32 paths (pairs in one call or alone, blocks, a permutation relabelled or
  recomputed) each within it of float64: PATHS_TOL = 2 RBF_TOL (measured <= 6e-7 on
  the two stacks, whose offset rows share a direction: <= 3.5e-7 from float64 each);
* clamp_outliers: CLAMP_RTOL = 1e-6 relative: the threshold is a float32 mean of m
  per-point interpolated quantiles (measured <= 1e-7 relative).
"""

import os

import jax
import numpy as np
import pytest
from helpers import tolerances

from geom_jax.errors import ArgumentError
from geom_jax.metrics.similarity import (
    data_overlap,
    knn_sequences,
    measure,
    outlier_clamp,
    rbf_cka,
)

for _m in (
    knn_sequences.CYCLE_KNN,
    knn_sequences.LCS_KNN,
    knn_sequences.EDIT_DISTANCE_KNN,
    rbf_cka.CKA_RBF,
    data_overlap.DATA_OVERLAP,
):
    measure.register(_m)

ROUNDING = 2 * np.finfo(np.float32).eps
RBF_TOL = 1e-6
PATHS_TOL = 2 * RBF_TOL
CLAMP_RTOL = 1e-6
CASES = ("gauss", "curved", "duplicates", "masked")
LISTS = ("cycle_knn", "lcs_knn", "edit_distance_knn", "data_overlap")
ALL = LISTS + ("cka_rbf",)


@pytest.fixture(scope="module")
def ref():
    path = os.path.join(os.path.dirname(__file__), "fixtures", "platonic_reference.npz")
    return dict(np.load(path))


def points(ref, case, garbage=np.nan):
    """x, y, mask of a case, invalid rows filled with garbage."""
    x, y, mask = (ref[f"{case}/{f}"].copy() for f in ("x", "y", "mask"))
    x[~mask], y[~mask] = garbage, -garbage
    return x, y, mask


def assert_count(got, want, total, where):
    """got (float32) and want are the same integer count / total, got to float32 rounding.
    want * total is an integer up to the reference's own rounding (float32 in places)."""
    count = np.rint(float(want) * total)
    assert abs(float(want) * total - count) < 1e-3, (where, want, total)
    assert np.rint(float(got) * total) == count, (where, got, want)
    assert abs(float(got) - count / total) <= ROUNDING, (where, got, count / total)


def test_list_measures_match_platonic(ref):
    """Cycle k-NN both ways (not symmetric: gauss differs), LCS (platonic-rep's mean length,
    not divided by k) and edit distance, on every case, invalid rows NaN."""
    k = int(ref["K_LIST"])
    for case in CASES:
        x, y, mask = points(ref, case)
        m = int(mask.sum())
        for cloud in (x[mask], y[mask]):
            assert not tolerances.inner_product_swaps(cloud, k).any(), case
        got = {
            "cycle_knn_xy": knn_sequences.cycle_knn(x, y, mask),
            "cycle_knn_yx": knn_sequences.cycle_knn(y, x, mask),
            "lcs_knn": knn_sequences.lcs_knn(x, y, mask),
            "edit_distance_knn": knn_sequences.edit_distance_knn(x, y, mask),
        }
        assert_count(got["cycle_knn_xy"], ref[f"{case}/cycle_knn_xy"], m, case)
        assert_count(got["cycle_knn_yx"], ref[f"{case}/cycle_knn_yx"], m, case)
        assert_count(got["lcs_knn"], ref[f"{case}/lcs_knn"] / k, m * k, case)
        assert_count(got["edit_distance_knn"], ref[f"{case}/edit_distance_knn"], m * k, case)
    assert ref["gauss/cycle_knn_xy"] != ref["gauss/cycle_knn_yx"]
    assert not ref["duplicates/lists_verbatim"] and ref["curved/lists_verbatim"]


def swap_rule(x, y, k, mask):
    """Data overlap's rank rule: one shared neighbour, of m k, per pair of Euclidean
    neighbours at rank k float32 cannot order, in either cloud."""
    a, b = x[mask], y[mask]
    swaps = tolerances.neighbour_swaps(a, k)[:, k - 1] + tolerances.neighbour_swaps(b, k)[:, k - 1]
    return swaps.sum() / (len(a) * k)


def test_data_overlap_matches_dadapy(ref):
    k = int(ref["K_OVERLAP"])
    for case in CASES:
        x, y, mask = points(ref, case, garbage=1e30)
        atol = swap_rule(x, y, k, mask)
        assert atol == 0.0, case
        got = data_overlap.data_overlap(x, y, mask)
        tolerances.assert_rank_field(got, ref[f"{case}/data_overlap"], "overlap", atol, case)
    assert not ref["duplicates/data_overlap_verbatim"] and ref["gauss/data_overlap_verbatim"]


def test_cka_rbf_matches_platonic(ref):
    for case in CASES:
        x, y, mask = points(ref, case)
        for s, sigma in enumerate(ref["SIGMAS"]):
            for u, debiased in enumerate((False, True)):
                kl, kk, ll = ref[f"{case}/cka_rbf_hsic"][s, u]
                with_eps = kl / (np.sqrt(kk * ll) + 1e-6)
                assert abs(with_eps - ref[f"{case}/cka_rbf"][s, u]) < 1e-12  # the same HSICs
                got = rbf_cka.cka_rbf(x, y, mask, sigma=float(sigma), debiased=debiased)
                want = kl / np.sqrt(kk * ll)
                tol = RBF_TOL * max(1.0, (0.3 / sigma) ** 2)
                assert abs(float(got) - want) < tol, (case, sigma, debiased, got, want)


def test_clamp_matches_platonic(ref):
    """Both quantiles; invalid rows come back as given (1e6, beyond any threshold)."""
    for case in CASES:
        x, _, mask = points(ref, case, garbage=1e6)
        for i, q in enumerate(ref["QS"]):
            got = np.asarray(outlier_clamp.clamp_outliers(x, mask, q=float(q)))
            np.testing.assert_allclose(got[mask], ref[f"{case}/clamped_x"][i], rtol=CLAMP_RTOL)
            np.testing.assert_array_equal(got[~mask], x[~mask])
            assert (got[mask] != x[mask]).any(), (case, q)


def test_clamp_q1_returns_x_and_threshold_is_per_cloud(ref):
    x, _, mask = points(ref, "curved")
    np.testing.assert_array_equal(outlier_clamp.clamp_outliers(x, q=1.0), x)
    both = np.stack([x, 2.0 * x])
    got = np.asarray(outlier_clamp.clamp_outliers(both, q=0.9))
    np.testing.assert_allclose(got[1], 2.0 * got[0], rtol=CLAMP_RTOL)


def evaluate(name, x, y, mask, **options):
    return np.asarray(measure.evaluate(name, x, y, mask, **options))


def test_garbage_in_invalid_rows_changes_nothing(ref):
    x, y, mask = points(ref, "masked", garbage=np.nan)
    x2, y2, _ = points(ref, "masked", garbage=3e35)
    for name in ALL:
        np.testing.assert_array_equal(
            evaluate(name, x, y, mask), evaluate(name, x2, y2, mask), err_msg=name
        )
    np.testing.assert_array_equal(
        np.asarray(outlier_clamp.clamp_outliers(x, mask))[mask],
        np.asarray(outlier_clamp.clamp_outliers(x2, mask))[mask],
    )


def test_batched_leading_axes(ref):
    """[2, 2] clouds (the four cases, one mask each) equal the per-cloud calls."""
    clouds = [points(ref, case, garbage=7.0) for case in CASES]
    x, y, mask = (
        np.stack([c[i] for c in clouds]).reshape((2, 2) + clouds[0][i].shape) for i in range(3)
    )
    for name in ALL:
        got = evaluate(name, x, y, mask)
        assert got.shape == (2, 2)
        want = [evaluate(name, *c) for c in clouds]
        np.testing.assert_array_equal(got.reshape(-1), want, err_msg=name)


def reciprocated_fraction(x, k):
    """Float64: points with a neighbour that lists them (unit rows, ties to lower index)."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = -(u @ u.T)
    np.fill_diagonal(s, np.inf)
    lists = np.argsort(s, axis=1, kind="stable")[:, :k]
    return np.mean([any(i in lists[j] for j in lists[i]) for i in range(len(x))])


def test_identical_inputs_give_the_best_value(ref):
    x, y, mask = points(ref, "masked")
    for name in ALL:
        best = measure.get(name).best
        for same in (x.copy(), None):  # two equal stacks, or x against itself
            got = evaluate(name, x, same, mask)
            if name == "cycle_knn":
                assert_count(got, reciprocated_fraction(x[mask], 10), int(mask.sum()), name)
                one = evaluate(name, x, same, mask, k=1)  # mutual nearest neighbours
                want = reciprocated_fraction(x[mask], 1)
                assert_count(one, want, int(mask.sum()), name)
                assert want < best
            elif name == "cka_rbf":
                assert abs(float(got) - best) < RBF_TOL
                debiased = evaluate(name, x, same, mask, debiased=True)
                assert abs(float(debiased) - best) < RBF_TOL
            else:
                assert float(got) == best, name
    m = int(mask.sum())
    assert float(knn_sequences.cycle_knn(x, x, mask, k=m - 1)) == 1.0


def two_stacks(ref):
    """a [3, N, 24], b [2, N, 10]: distinct layers of the curved and masked points."""
    x, y, _ = points(ref, "curved")
    x2, y2, _ = points(ref, "masked")
    return np.stack([x, np.tanh(x2 - 3.0), x2]), np.stack([y, y2 * y2]), ref["masked/mask"]


def scores(name, a, b, valid, perms=None, **given):
    options = measure.get(name).resolve(given)
    raw, null = measure.stack_scores(
        {name: options},
        a[None],
        None if b is None else b[None],
        valid[None],
        None if perms is None else perms[None],
    )
    return raw[name], (None if null is None else null[name])


PAIRS = ("cycle_knn", "lcs_knn", "cka_rbf")
"""One measure per way of scoring layer pairs: all pairs of lists (cycle_knn), the
symmetric half mirrored (lcs_knn; edit_distance_knn and data_overlap the same way), and
the kernel blocks (cka_rbf)."""


def test_all_layer_pairs_equal_single_pairs(ref):
    """La x Lb in one call (and a stack against itself) equals each pair alone."""
    a, b, valid = two_stacks(ref)
    for name in PAIRS:
        raw, _ = scores(name, a, b, valid)
        own, _ = scores(name, a, None, valid)
        single = np.array([[evaluate(name, p, q, valid) for q in b] for p in a])
        mine = np.array([[evaluate(name, p, q, valid) for q in a] for p in a])
        if name == "cka_rbf":
            np.testing.assert_allclose(raw[0], single, atol=PATHS_TOL, err_msg=name)
            np.testing.assert_allclose(own[0], mine, atol=PATHS_TOL, err_msg=name)
        else:  # the same counts; XLA may round count / (m k) once differently
            np.testing.assert_allclose(raw[0], single, rtol=0, atol=ROUNDING, err_msg=name)
            np.testing.assert_allclose(own[0], mine, rtol=0, atol=ROUNDING, err_msg=name)


def test_small_batches_and_blocks_give_the_same_scores(ref, monkeypatch):
    """Pairs mapped two at a time (with a remainder batch) and RBF kernels in 48-row
    blocks (the last one shifted back) against one batch and one block (no jit cache)."""
    a, b, valid = two_stacks(ref)
    for name in PAIRS:
        m = measure.get(name)
        o = m.resolve({})

        def run(m=m, o=o):
            sa, sb = m.layer_stats(a, valid, **o), m.layer_stats(b, valid, **o)
            return m.pair_scores(sa, sb, valid, **o), m.pair_scores(sa, None, valid, **o)

        whole = jax.jit(lambda: run())()
        with monkeypatch.context() as patch:
            k = o.get("k", 1)
            patch.setattr(knn_sequences, "PAIR_BATCH_ELEMENTS", 2 * a.shape[1] * k * k)
            patch.setattr(rbf_cka, "KERNEL_BLOCK_BYTES", 4 * 5 * 48 * 48)
            parts = jax.jit(lambda: run())()  # a new function: traced again, not cached
        for got, want in zip(parts, whole):
            np.testing.assert_allclose(got, want, atol=PATHS_TOL if name == "cka_rbf" else 0)


def test_permute_equals_recomputing(ref):
    """A permutation null relabels the second stack's statistics: the same statistics
    (unit-row lists, Euclidean lists, RBF row means) and, for every measure, the same
    null scores as the permuted points (points without exact ties)."""
    a, b, valid = two_stacks(ref)
    perms = measure.valid_permutations(valid[None], 2, seed=5)[0]
    np.testing.assert_array_equal(
        perms[:, ~valid], np.broadcast_to(np.flatnonzero(~valid), (2, 20))
    )
    assert (perms != np.arange(len(valid))).any(axis=1).all()
    for name in ("cycle_knn", "data_overlap", "cka_rbf"):
        m = measure.get(name)
        o = m.resolve({})
        layer_stats = jax.jit(lambda pts, m=m, o=o: m.layer_stats(pts, valid, **o))
        permute = jax.jit(lambda st, perm, m=m, o=o: m.permute(st, perm, valid, **o))
        stats = layer_stats(b)
        for perm in perms:
            moved, fresh = permute(stats, perm), layer_stats(b[:, perm])
            if name == "cka_rbf":
                for got_leaf, want_leaf in zip(moved, fresh):
                    np.testing.assert_allclose(got_leaf, want_leaf, atol=1e-6)
            else:
                np.testing.assert_array_equal(moved, fresh, err_msg=name)
    for name in ALL:
        _, null = scores(name, a, b, valid, perms)
        for p, perm in enumerate(perms):
            want, _ = scores(name, a, b[:, perm], valid)
            tol = PATHS_TOL if name == "cka_rbf" else 0
            np.testing.assert_allclose(null[0, p], want[0], atol=tol, err_msg=name)


BAD = {
    "k_zero": (lambda f, x, y: f(x, y, k=0), "k must be an integer >= 1, got 0"),
    "k_float": (lambda f, x, y: f(x, y, k=2.5), "k must be an integer, got 2.5"),
    "too_few_points": (
        lambda f, x, y: f(x[:6], y[:6], k=6),
        "k=6 needs >= 7 points per cloud, got N = 6",
    ),
    "too_few_valid": (
        lambda f, x, y: f(x, y, np.arange(len(x)) < 5, k=5),
        r"mask: k=5 needs >= 6 valid points, but cloud \(\) has 5",
    ),
}
LIST_FUNCTIONS = {
    "cycle_knn": knn_sequences.cycle_knn,
    "lcs_knn": knn_sequences.lcs_knn,
    "edit_distance_knn": knn_sequences.edit_distance_knn,
    "data_overlap": data_overlap.data_overlap,
}


def one_line_error(kind, message, fn):
    with pytest.raises(kind, match=message) as caught:
        fn()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("name", sorted(LIST_FUNCTIONS))
def test_bad_k_or_points(ref, name, case):
    x, y, _ = points(ref, "gauss")
    fn, message = BAD[case]
    one_line_error(ValueError, message, lambda: fn(LIST_FUNCTIONS[name], x, y))


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_sigma(ref, sigma):
    x, y, _ = points(ref, "gauss")
    one_line_error(
        ArgumentError,
        "sigma must be a finite number > 0",
        lambda: rbf_cka.cka_rbf(x, y, sigma=sigma),
    )


def test_debiased_needs_four_points(ref):
    x, y, _ = points(ref, "gauss")
    message = r"the unbiased HSIC \(debiased=True\) needs >= 4 points per cloud, got N = 3"
    one_line_error(ValueError, message, lambda: rbf_cka.cka_rbf(x[:3], y[:3], debiased=True))
    assert np.isfinite(rbf_cka.cka_rbf(x[:3], y[:3]))


@pytest.mark.parametrize("q", [0.0, -0.5, 1.5, True])
def test_bad_q(ref, q):
    x, _, _ = points(ref, "gauss")
    one_line_error(
        ArgumentError,
        r"q must be a number in \(0, 1\]",
        lambda: outlier_clamp.clamp_outliers(x, q=q),
    )
