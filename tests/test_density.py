"""The density estimators against DADApy 0.3.4 (tests/fixtures/density_reference.npz,
tests/reference/density_reference.py).

The three cases (a Gaussian mixture, a curved 5-manifold in 20 dimensions, integer
points with exact duplicates and large groups of equal distances) share N = 500 and
D = 20 and go through each estimator in one batched call. Tolerances, relative to the
float64 references, each beside its reason (the measured worst case in brackets):

* KNN_REL = 1e-5 for the k-NN log densities: log k - log N - log V_d - d log r_k from
  float32 distances (relative error ~1e-7) and float32 log-gamma, summed in float32
  (terms up to ~40, so ~4e-6 absolute at worst) [2.1e-7 relative, 1.5e-6 absolute;
  with TwoNN's float32 dimension, 6.3e-7 on ``ties``].
* PAK_REL = 1e-5 for the PAk log densities: the same start and the same damped Newton
  steps as DADApy, stopped by its rule (a relative gradient of 1e-3) or, where float32
  cannot reach that rule (|dL/da| / |a| <= 1e-3 with a ~ 0.05 asks for a gradient below
  its float32 rounding, ~1e-4), once the full Newton step in F is within its own
  rounding error [1.6e-6 relative, 9.3e-6 absolute, ``mixture``]. A point where float32
  met DADApy's rule one step earlier or later than float64 would differ by ~0.1 of
  DADApy's remaining distance to the maximiser (at most 1.8e-3 here, ``pak_optimum``),
  which the test would report.
* ERR_REL = 1e-6 for the errors, float32 functions of k (or k*) alone [6.0e-8].
* k* exactly, except where the reference's likelihood-ratio statistic lies within
  KSTAR_MARGIN = 1e-4 (relative) of Dthr at one of the tests that decided it: float32
  distances carry ~1e-7 relative errors, which the statistic
  4 (j - 1) log cosh(d/2 log(r_i / r_j)) amplifies to at most ~1e-5 near the threshold
  (j <= 99, d ~ 5). The fixtures' smallest margin is 3.6e-4 (``mixture``), so every k*
  must (and does) agree.
* NaN in the same places (PAk at the 100 points of ``ties`` that have a twin).
"""

import os

import jax
import numpy as np
import pytest

from geom_jax.errors import ArgumentError
from geom_jax.metrics import knn_density, pak_density, pak_kstar, twonn

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "density_reference.npz")
REF = dict(np.load(FIXTURE))
CASES = ("mixture", "curved", "ties")
X = np.stack([REF[f"{c}/x"] for c in CASES])
IDS = np.array([REF[f"{c}/id"] for c in CASES])
KNN_REL = 1e-5
PAK_REL = 1e-5
ERR_REL = 1e-6
KSTAR_MARGIN = 1e-4


def assert_close(got, want, tol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN in other places"
    ok = ~np.isnan(want)
    dev = np.abs(got[ok] - want[ok]) / np.abs(want[ok])
    assert dev.max() <= tol, f"{what}: max relative deviation {dev.max():.2e} > {tol}"


def kstar_agrees(got, case):
    """k* equal to DADApy's wherever float32 can decide its tests (see the docstring)."""
    want, margin = REF[f"{case}/pak_kstar"], REF[f"{case}/pak_margin"]
    differ = np.asarray(got) != want
    assert not np.any(differ & (margin >= KSTAR_MARGIN)), (
        f"{case}: k* differs at points {np.flatnonzero(differ)}, margins {margin[differ]}"
    )
    return differ


@pytest.mark.parametrize("k", [16, 40])
def test_knn_against_reference_and_batching(k):
    """The three cases in one call with leading axes [3, 1], each with its ID; the curved
    cloud alone (no leading axis) gives its batched values."""
    den, err = knn_density(X[:, None], k=k, intrinsic_dim=IDS[:, None])
    assert den.shape == err.shape == (3, 1, 500) and den.dtype == np.float32
    for i, c in enumerate(CASES):
        assert_close(den[i, 0], REF[f"{c}/knn_k{k}"], KNN_REL, f"{c} k={k}")
        assert_close(err[i, 0], REF[f"{c}/knn_k{k}_err"], ERR_REL, f"{c} k={k} err")
    single, _ = knn_density(X[1], k=k, intrinsic_dim=float(IDS[1]))
    assert_close(single, den[1, 0], 1e-6, "curved alone")


def test_pak_against_reference_and_batching():
    """k*, PAk log densities and errors of the three cases in one call each, batched
    [3, 1]; the curved cloud alone gives its batched values."""
    den, err = pak_density(X[:, None], intrinsic_dim=IDS[:, None])
    kstar = np.asarray(pak_kstar(X[:, None], intrinsic_dim=IDS[:, None]))
    assert den.shape == err.shape == kstar.shape == (3, 1, 500) and kstar.dtype == np.int32
    for i, c in enumerate(CASES):
        same = ~kstar_agrees(kstar[i, 0], c)
        want = np.where(same, REF[f"{c}/pak"], np.nan)
        assert_close(np.where(same, den[i, 0], np.nan), want, PAK_REL, f"{c} PAk")
        want = np.where(same, REF[f"{c}/pak_err"], np.nan)
        assert_close(np.where(same, err[i, 0], np.nan), want, ERR_REL, f"{c} PAk err")
    assert np.isnan(den[2, 0]).sum() == 100  # the twins of ``ties``
    single, _ = pak_density(X[1], intrinsic_dim=float(IDS[1]))
    assert_close(single, den[1, 0], 1e-6, "curved alone")


def test_default_intrinsic_dim_is_twonn():
    """intrinsic_dim=None: TwoNN per cloud, DADApy's compute_id_2NN on ``mixture`` and
    ``curved`` (float32: 1e-6 relative); on ``ties`` TwoNN counts unique points, as the
    reference ``ties/twonn`` (DADApy on the unique rows) does."""
    ids = np.asarray(twonn(X))
    want = np.array([REF["mixture/id"], REF["curved/id"], REF["ties/twonn"]])
    assert np.all(np.abs(ids / want - 1) <= 1e-5), ids / want - 1
    den, _ = knn_density(X)
    assert_close(den[0], REF["mixture/knn_k16"], KNN_REL, "mixture")
    assert_close(den[1], REF["curved/knn_k16"], KNN_REL, "curved")
    assert_close(den[2], REF["ties/knn_k16_twonn"], KNN_REL, "ties")
    den, _ = pak_density(X[:2])
    kstar = pak_kstar(X[:2])
    for i, c in enumerate(CASES[:2]):
        same = ~kstar_agrees(kstar[i], c)
        got = np.where(same, den[i], np.nan)
        assert_close(got, np.where(same, REF[f"{c}/pak"], np.nan), PAK_REL, c)


def garbage_padded():
    """The curved cloud with 40 invalid rows inserted, holding NaN, 1e30 and copies of
    valid points (which would be twins if they were not masked), moved to have its mean
    at the origin (densities are translation invariant), where zeroed invalid rows would
    land among the points' neighbours if they were not masked."""
    x, mask = REF["masked_x"].copy(), REF["masked_mask"]
    x -= x[mask].mean(axis=0)
    bad = np.flatnonzero(~mask)
    x[bad] = np.nan
    x[bad[::3]] = 1e30
    x[bad[1::3]] = x[np.flatnonzero(mask)[: len(bad[1::3])]]
    return x, mask


def test_mask_ignores_garbage():
    """Padded with garbage rows (mask False), every output at the valid rows is the
    unpadded cloud's (N counts the valid points), NaN (k* -1) at the others."""
    x, mask = garbage_padded()
    d = float(REF["curved/id"])
    den, err = knn_density(x, mask, k=16, intrinsic_dim=d)
    assert np.all(np.isnan(den[~mask])) and np.all(np.isnan(err[~mask]))
    assert_close(den[mask], REF["curved/knn_k16"], KNN_REL, "masked k-NN")
    kstar = np.asarray(pak_kstar(x, mask, intrinsic_dim=d))
    assert np.all(kstar[~mask] == -1)
    same = ~kstar_agrees(kstar[mask], "curved")
    den, err = pak_density(x, mask, intrinsic_dim=d)
    assert np.all(np.isnan(den[~mask])) and np.all(np.isnan(err[~mask]))
    want = np.where(same, REF["curved/pak"], np.nan)
    assert_close(np.where(same, den[mask], np.nan), want, PAK_REL, "masked PAk")
    den, _ = knn_density(x, mask, k=16)  # TwoNN of the valid points
    assert_close(den[mask], REF["curved/knn_k16"], KNN_REL, "masked k-NN, TwoNN")


def test_duplicates_give_zero_radii():
    """A point with k or more twins has r_k = 0: log density +inf (DADApy's
    log(k) - d log 0), its neighbours' values finite; under jit too."""
    x = np.random.default_rng(0).standard_normal((12, 3)).astype(np.float32)
    x[1:4] = x[0]
    den, _ = jax.jit(lambda a: knn_density(a, k=3, intrinsic_dim=2.0))(x)
    assert np.all(np.isposinf(den[:4])) and np.all(np.isfinite(den[4:]))
    den, _ = pak_density(x, intrinsic_dim=2.0, max_k=6)
    assert np.all(np.isnan(den[:4])) and np.all(np.isfinite(den[4:]))


SMALL = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)

BAD = [
    (knn_density, {"k": 0}, "k"),
    (knn_density, {"k": 30}, "k"),
    (knn_density, {"k": 2.5}, "k"),
    (knn_density, {"intrinsic_dim": 0.0}, "intrinsic_dim"),
    (knn_density, {"intrinsic_dim": -2}, "intrinsic_dim"),
    (knn_density, {"intrinsic_dim": np.nan}, "intrinsic_dim"),
    (knn_density, {"intrinsic_dim": np.ones(3)}, "intrinsic_dim"),
    (pak_density, {"intrinsic_dim": 0.0}, "intrinsic_dim"),
    (pak_density, {"alpha": 0.0}, "alpha"),
    (pak_density, {"alpha": 1.0}, "alpha"),
    (pak_density, {"max_k": 3}, "max_k"),
    (pak_density, {"max_iter": 0}, "max_iter"),
    (pak_kstar, {"intrinsic_dim": -1.0}, "intrinsic_dim"),
    (pak_kstar, {"max_k": 2.0}, "max_k"),
]


@pytest.mark.parametrize(
    "fn,options,name", BAD, ids=[f"{f.__name__}-{n}-{i}" for i, (f, _, n) in enumerate(BAD)]
)
def test_bad_option_names_it(fn, options, name):
    """Each bad option raises a ValueError naming it, before anything is computed (k = 30
    does not fit 30 points; an intrinsic_dim of shape [3] does not fit one cloud)."""
    with pytest.raises(ValueError) as info:
        fn(SMALL, **options)
    assert isinstance(info.value, ArgumentError) and name in info.value.names
    assert name in str(info.value)


@pytest.mark.parametrize("fn", [knn_density, pak_density, pak_kstar])
def test_too_few_valid_points_names_mask(fn):
    """A mask leaving fewer valid points than the estimator needs names the mask."""
    mask = np.zeros(30, bool)
    mask[:3] = True
    with pytest.raises(ValueError, match="mask"):
        fn(SMALL, mask, intrinsic_dim=2.0)


def test_non_finite_valid_point_names_x():
    x = SMALL.copy()
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="x has non-finite"):
        knn_density(x, k=5, intrinsic_dim=2.0)
