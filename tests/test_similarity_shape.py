"""Procrustes, the angular shape metric, SVCCA and PWCCA against netrep and google/svcca
(tests/fixtures/shape_reference.npz, tests/reference/shape_reference.py).

Tolerance against the float64 references: REF_TOL = 2e-6 absolute. Each value is a
sum of at most 24 singular values of float32 products of float32 SVD factors
(eps = 1.2e-7), or an arccos / square root of such a sum away from 0 and 1; measured
at most 2.2e-7. PWCCA gets PWCCA_TOL = 1e-5: its weights follow the singular vectors
of U_x^T U_y, and for two nearly equal canonical correlations the float32 rounding of
that product (~1e-7 per entry) turns them within their plane by ~1e-7 / gap, which
moves the sum of their two weights (an L1 sum over the neurons); measured 1.9e-6 on
``duplicates`` (gap 4.4e-3), 1e-7 on the other cases. Invariances compare two float32
computations of one value: INV_TOL = 5e-6 (the same rounding, twice, after maps with
condition numbers below 3). A copy of a cloud scores within BEST_TOL of the best: 1e-5
for the correlations, 3e-3 for the distances, whose square root (sqrt(2 - 2c),
arccos c) turns a rounding of c of ~1e-6 into ~1e-3.

Every call of a measure at one (options, N, Dx, Dy) compiles once; the cases share
N = 240 and (Dx, Dy) = (24, 10) so that the reference, batch and invariance tests
reuse the same eight programs.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from geom_jax.errors import ArgumentError
from geom_jax.metrics.similarity import cca, measure, shape_metrics

for _m in (shape_metrics.PROCRUSTES, shape_metrics.SHAPE_METRIC, cca.SVCCA, cca.PWCCA):
    measure.register(_m)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "shape_reference.npz")
REF = dict(np.load(FIXTURE))
REF_TOL, PWCCA_TOL, INV_TOL = 2e-6, 1e-5, 5e-6
BEST_TOL = {"procrustes": 3e-3, "shape_metric": 3e-3, "svcca": 1e-5, "pwcca": 1e-5}
CASES = ("gauss", "curved", "masked", "duplicates", "tiny")

# name, options, fixture field
MEASURES = {
    "procrustes": ("procrustes", {}, "procrustes"),
    "shape_a1": ("shape_metric", {"alpha": 1.0}, "shape_alpha1"),
    "shape_a05": ("shape_metric", {"alpha": 0.5}, "shape_alpha05"),
    "shape_a0": ("shape_metric", {"alpha": 0.0}, "shape_alpha0"),
    "svcca_099": ("svcca", {"keep": 0.99}, "svcca_keep099"),
    "svcca_09": ("svcca", {"keep": 0.9}, "svcca_keep09"),
    "svcca_1": ("svcca", {"keep": 1.0}, "svcca_keep1"),
    "pwcca": ("pwcca", {}, "pwcca"),
}
PUBLIC = {
    "procrustes": shape_metrics.procrustes,
    "shape_metric": shape_metrics.shape_metric,
    "svcca": cca.svcca,
    "pwcca": cca.pwcca,
}


def score(name, x, y, mask=None, **options):
    return np.asarray(PUBLIC[name](x, y, mask, **options))


def with_garbage(case):
    """x, y, mask of a case; invalid rows of x hold NaN, of y 1e30."""
    x, y = REF[f"{case}/x"].copy(), REF[f"{case}/y"].copy()
    mask = REF.get(f"{case}/mask", np.ones(len(x), bool))
    x[~mask], y[~mask] = np.nan, 1e30
    return x, y, mask


@pytest.mark.parametrize("key", MEASURES)
def test_against_reference_batched_and_masked(key):
    """All cases in one call with leading axes [5, 1]; the masked case holds garbage
    in its invalid rows and is compared with the reference of its valid rows."""
    name, options, field = MEASURES[key]
    x, y, mask = (np.stack(a)[:, None] for a in zip(*(with_garbage(c) for c in CASES)))
    got = score(name, x, y, mask, **options)
    assert got.shape == (len(CASES), 1) and got.dtype == np.float32
    want = np.array([REF[f"{c}/{field}"] for c in CASES])
    tol = PWCCA_TOL if name == "pwcca" else REF_TOL
    np.testing.assert_allclose(got[:, 0], want, rtol=0, atol=tol)


def orthogonal(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def invertible(rng, d):
    return np.eye(d) + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)


# Maps of (x, y) that leave each measure unchanged, by name.
TRANSLATE = lambda r, x, y: (x + 5.0, y - 7.0 * np.arange(y.shape[1]))
ROTATE_X = lambda r, x, y: (x @ orthogonal(r, x.shape[1]), y)
ROTATE_Y = lambda r, x, y: (x, y @ orthogonal(r, y.shape[1]))
SCALE = lambda r, x, y: (3.5 * x, 0.25 * y)
LINEAR_X = lambda r, x, y: (x @ invertible(r, x.shape[1]), y)
LINEAR_Y = lambda r, x, y: (x, y @ invertible(r, y.shape[1]))
INVARIANT = {
    "procrustes": (TRANSLATE, ROTATE_X, ROTATE_Y, SCALE),
    "shape_a1": (TRANSLATE, ROTATE_X, ROTATE_Y, SCALE),
    "shape_a05": (TRANSLATE, ROTATE_X, ROTATE_Y),
    "shape_a0": (TRANSLATE, ROTATE_X, ROTATE_Y, SCALE, LINEAR_X, LINEAR_Y),
    "svcca_099": (TRANSLATE, ROTATE_X, ROTATE_Y, SCALE),
    "svcca_1": (TRANSLATE, SCALE, LINEAR_X, LINEAR_Y),
    # y (Dy = 10 < Dx = 24) weighs: any invertible map of x keeps the canonical
    # correlations and y's directions.
    "pwcca": (TRANSLATE, SCALE, ROTATE_X, LINEAR_X),
}


@pytest.mark.parametrize("key", INVARIANT)
def test_invariances(key):
    name, options, _ = MEASURES[key]
    rng = np.random.default_rng(7)
    x, y = REF["curved/x"].astype(np.float64), REF["curved/y"].astype(np.float64)
    maps = INVARIANT[key]
    xs, ys = zip((x, y), *(f(rng, x, y) for f in maps))
    got = score(name, np.float32(np.stack(xs)), np.float32(np.stack(ys)), **options)
    np.testing.assert_allclose(got[1:], got[0], rtol=0, atol=INV_TOL)
    if key in ("shape_a05", "svcca_099"):
        # netrep's partial whitening is not scale-free; SVCCA with keep < 1 keeps the
        # leading directions, which a linear map changes.
        other = (SCALE if key == "shape_a05" else LINEAR_X)(rng, x, y)
        assert abs(score(name, *map(np.float32, other), **options) - got[0]) > 1e-4


@pytest.mark.parametrize("key", ["procrustes", "shape_a05", "svcca_099", "pwcca"])
def test_stack_self_pairs_copies_and_permutation_null(key):
    """A stack against itself (stats_b None): the tie case (Dx = Dy = 10) as layers
    [x, y, copy of x] and the same three with their points permuted. Cloud 0: every
    point valid, (x, y) and (y, x) against the references (pwcca weighs with its first
    argument on the tie), the diagonal exactly the best value, the copy within
    BEST_TOL of it; the null of ``permute`` (stored row factors reordered) against the
    same pairs computed from permuted points (SVDs of the permuted layers). Cloud 1:
    30 invalid rows of garbage."""
    name, options, field = MEASURES[key]
    m = measure.get(name)
    x, y = REF["tie/x"], REF["tie/y"]
    n = len(x)
    valid = np.ones((2, n), bool)
    valid[1, np.random.default_rng(3).choice(n, 30, replace=False)] = False
    perms = measure.valid_permutations(valid, 1, seed=11)
    stacks = []
    for b in range(2):
        base = np.stack([x, y, x.copy()])
        base[:, ~valid[b]] = np.nan
        stacks.append(np.concatenate([base, base[:, perms[b, 0]]]))
    raw, null = measure.stack_scores(
        {name: m.resolve(options)}, jnp.asarray(np.stack(stacks)), None, jnp.asarray(valid), perms
    )
    raw, null = np.asarray(raw[name]), np.asarray(null[name])
    want_yx = REF[f"tie/{field}_yx"] if name == "pwcca" else REF[f"tie/{field}"]
    tol = PWCCA_TOL if name == "pwcca" else REF_TOL
    np.testing.assert_allclose(raw[0, [0, 1], [1, 0]], [REF[f"tie/{field}"], want_yx], atol=tol)
    assert np.all(np.diagonal(raw, axis1=1, axis2=2) == m.best)
    assert abs(raw[0, 0, 2] - m.best) < BEST_TOL[name]
    if name != "pwcca":
        np.testing.assert_allclose(raw, np.swapaxes(raw, 1, 2), rtol=0, atol=1e-6)
    # rows 0-2 (unpermuted) against permuted layers: pairs away from the best value,
    # where two float32 routes to one score agree to INV_TOL
    np.testing.assert_allclose(null[:, 0, :3, :3], raw[:, :3, 3:], rtol=0, atol=INV_TOL)
    assert np.isfinite(raw).all() and np.isfinite(null).all()


@pytest.mark.parametrize(
    "fn, option, value",
    [
        (shape_metrics.shape_metric, "alpha", 1.5),
        (shape_metrics.shape_metric, "alpha", -0.1),
        (shape_metrics.shape_metric, "alpha", float("nan")),
        (cca.svcca, "keep", 0.0),
        (cca.svcca, "keep", 1.01),
        (cca.svcca, "keep", float("nan")),
    ],
)
def test_bad_options_are_one_line_errors(fn, option, value):
    x = np.zeros((10, 3), np.float32)
    with pytest.raises(ArgumentError) as err:
        fn(x, x, **{option: value})
    assert str(err.value).startswith(f"{option}=") and "\n" not in str(err.value)
