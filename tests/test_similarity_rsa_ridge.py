"""RSA (`similarity.rsa`) and cross-validated ridge predictivity
(`similarity.linear_predictivity`) against rsatoolbox 0.3.2 and scikit-learn in float64
(tests/fixtures/rsa_ridge_reference.npz, written by tests/reference/rsa_ridge_reference.py).

Tolerances (errors measured on an Intel Xeon under the suite's code generation):

* RSA_TOL = 2e-6, measured at most 3.6e-7. The float32 dissimilarities differ from
  float64 ones by ~1e-7 relative: that moves a Pearson score by ~1e-7 and swaps the
  ranks of entries closer than that, each swap moving a Spearman score by
  ~1e-11 here (M = 7,140 entries). Tie groups are exact on both sides (duplicate
  points; the lattice's integer squared distances), except the correlation
  distances of lattice points (below); average ranks against ordinal ones move the
  lattice's Spearman score by ~1e-2.
* RIDGE_TOL = 2e-5, measured at most 5.4e-6 (the lattice, ridge 100): float32 fold
  Grams and Cholesky factors of training Grams of condition number up to ~1e3 (the
  points are centred first).
* ONE_TOL = 1e-5: a unit-norm float32 vector of M entries against itself, summed in
  chunks (~1e-6).
"""

from pathlib import Path

import numpy as np
import pytest

from geom_jax.errors import ArgumentError
from geom_jax.metrics.similarity import linear_predictivity as lp
from geom_jax.metrics.similarity import measure, rsa

FIXTURE = Path(__file__).parent / "fixtures" / "rsa_ridge_reference.npz"
RSA_TOL = 2e-6
RIDGE_TOL = 2e-5
ONE_TOL = 1e-5
METHODS = ("spearman", "pearson")  # the fixture's first index ("spearman", "corr")
RDMS = ("correlation", "euclidean")

measure.register(rsa.RSA)
measure.register(lp.LINEAR_PREDICTIVITY)


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


def with_garbage(points, mask):
    """points with every invalid row replaced by NaN and huge values."""
    out = np.array(points, np.float32, copy=True)
    bad = ~np.broadcast_to(mask, out.shape[:-1])
    out[bad] = np.nan
    out[bad, ::2] = 3e38
    return out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rdm", RDMS)
def test_rsa_matches_rsatoolbox(ref, method, rdm):
    """Every case (gauss, curved, duplicates, lattice, masked: the cases are a batch
    axis; the masked one's invalid rows hold garbage)."""
    x, y, mask = ref["x"], ref["y"], ref["mask"]
    got = np.asarray(
        rsa.rsa(with_garbage(x, mask), with_garbage(y, mask), mask, method=method, rdm=rdm)
    )
    want = ref["rsa"][:, METHODS.index(method), RDMS.index(rdm)]
    assert got.shape == want.shape
    if (method, rdm) == ("spearman", "correlation"):
        # Correlation distances between lattice points that are equal in exact
        # arithmetic differ in their last bits, in float64 as in float32 (the 453
        # distinct values of rsatoolbox's RDM of x are 263 rounded to 1e-9): which of them
        # tie is arbitrary on both sides and moves the Spearman score by ~1e-3.
        keep = ref["cases"] != "lattice"
        got, want = got[keep], want[keep]
    np.testing.assert_allclose(got, want, rtol=0, atol=RSA_TOL, err_msg=str(ref["cases"]))


@pytest.mark.parametrize("max_points", [100, 280])
def test_rsa_subsample(ref, max_points):
    """N = 300 with 260 valid: a subsample of 100 valid points (and at 280 all the
    valid points plus 20 invalid ones, which take no part); the indices are the
    fixture's NumPy transcription of the hash."""
    x, y, mask, seed = ref["sub_x"], ref["sub_y"], ref["sub_mask"], int(ref["sub_seed"])
    index = np.asarray(rsa.subsample(mask, max_points, seed))
    np.testing.assert_array_equal(index, ref[f"sub_index_{max_points}"])
    got = float(rsa.rsa(with_garbage(x, mask), y, mask, max_points=max_points, seed=seed))
    want = ref["sub_rsa"][[100, 280].index(max_points), 0, 0]
    assert abs(got - want) < RSA_TOL, (got, want)


@pytest.mark.parametrize("setting", [0, 1, 2])
def test_ridge_matches_sklearn(ref, setting):
    """Both directions on every case; setting = (folds, ridge, seed)."""
    folds, ridge, seed = ref["ridge_settings"][setting]
    opts = dict(folds=int(folds), ridge=float(ridge), seed=int(seed))
    x, y, mask = (
        with_garbage(ref["x"], ref["mask"]),
        with_garbage(ref["y"], ref["mask"]),
        ref["mask"],
    )
    xy = np.asarray(lp.linear_predictivity(x, y, mask, **opts))
    np.testing.assert_allclose(xy, ref["ridge_xy"][:, setting], rtol=0, atol=RIDGE_TOL)
    if setting == 0:
        yx = np.asarray(lp.linear_predictivity(y, x, mask, **opts))
        np.testing.assert_allclose(yx, ref["ridge_yx"][:, setting], rtol=0, atol=RIDGE_TOL)


def test_ridge_folds_are_sklearns(ref):
    """KFold(5, shuffle=True, random_state=0) over the masked case's valid rows."""
    groups = lp.fold_groups_host(ref["mask"][-1], 5, 0)
    np.testing.assert_array_equal(groups, ref["ridge_groups"])


def test_batched_leading_axes(ref):
    """[2, 2, N, D] clouds give what each cloud gives alone."""
    x, y, mask = ref["x"][:4].reshape(2, 2, 120, -1), ref["y"][:4].reshape(2, 2, 120, -1), None
    for fn in (rsa.rsa, lp.linear_predictivity):
        out = np.asarray(fn(x, y, mask))
        assert out.shape == (2, 2)
        for i in range(2):
            for j in range(2):
                assert out[i, j] == float(fn(x[i, j], y[i, j])), fn.__name__


def test_layer_pairs_are_the_per_pair_scores(ref):
    """Stacks of 3 and 2 layers: entry [a, b] is the per-pair score of layer a of the
    first stack and layer b of the second (for ridge: b predicted from a); RSA of a
    stack against itself is symmetric with the per-pair scores off the diagonal.
    Within float32 rounding (a batch of pairs is summed in another order than one
    pair): 1e-6 for RSA, 1e-5 for ridge (whose float32 error is ~5e-6)."""
    xs, ys = ref["x"][:3], ref["y"][:2]
    valid = np.ones((1, 120), bool)
    fns = {"rsa": (rsa.rsa, 1e-6), "linear_predictivity": (lp.linear_predictivity, 1e-5)}
    for name, (fn, atol) in fns.items():
        opts = measure.get(name).resolve({})
        raw, _ = measure.stack_scores({name: opts}, xs[None], ys[None], valid)
        want = [[float(fn(a, b)) for b in ys] for a in xs]
        np.testing.assert_allclose(np.asarray(raw[name])[0], want, rtol=0, atol=atol, err_msg=name)
    raw, _ = measure.stack_scores({"rsa": measure.get("rsa").resolve({})}, xs[None], None, valid)
    raw = np.asarray(raw["rsa"])[0]
    np.testing.assert_array_equal(raw, raw.T)
    np.testing.assert_allclose(raw[0, 1:], [float(rsa.rsa(xs[0], b)) for b in xs[1:]], atol=1e-6)


@pytest.mark.parametrize("case", ["curved", "lattice"])
def test_rsa_of_identical_inputs_is_one(ref, case):
    """y = x, as the same array (one stack against itself) and as a copy."""
    c = list(ref["cases"]).index(case)
    x = ref["x"][c]
    assert abs(float(rsa.rsa(x, x)) - 1.0) < ONE_TOL
    assert abs(float(rsa.rsa(x, x.copy())) - 1.0) < ONE_TOL


def null_and_recomputed(name, fn, x, y, mask, options, permute_y):
    """Null scores of the measure's permute (measure.stack_scores) and the scores
    recomputed by fn from the permuted points permute_y(y, perm)."""
    perms = measure.valid_permutations(mask[None], 3, seed=5)
    opts = measure.get(name).resolve(options)
    _, null = measure.stack_scores({name: opts}, x[None, None], y[None, None], mask[None], perms)
    again = [float(fn(x, permute_y(y, p), mask, **options)) for p in perms[0]]
    return np.asarray(null[name])[0, :, 0, 0], np.array(again)


def test_rsa_permute_equals_recomputing(ref):
    """All valid points in the subsample: permute gives the permuted points' scores."""
    x, y, mask = ref["x"][-1], ref["y"][-1], ref["mask"][-1]
    null, again = null_and_recomputed("rsa", rsa.rsa, x, y, mask, {}, lambda y, p: y[p])
    np.testing.assert_allclose(null, again, rtol=0, atol=1e-6)


def test_rsa_permute_within_the_subsample(ref):
    """More valid points than max_points: the permutation induced on the subsample S
    (position a goes to the rank of perm[S[a]] among perm[S])."""
    x, y, mask = ref["sub_x"], ref["sub_y"], ref["sub_mask"]
    s = ref["sub_index_100"]
    options = dict(max_points=100, seed=3)

    def on_subsample(y, p):
        moved = y.copy()
        moved[s] = y[s][np.argsort(np.argsort(p[s]))]
        return moved

    null, again = null_and_recomputed("rsa", rsa.rsa, x, y, mask, options, on_subsample)
    np.testing.assert_allclose(null, again, rtol=0, atol=1e-6)


def test_ridge_permute_equals_recomputing(ref):
    x, y, mask = ref["x"][-1], ref["y"][-1], ref["mask"][-1]
    null, again = null_and_recomputed(
        "linear_predictivity", lp.linear_predictivity, x, y, mask, {}, lambda y, p: y[p]
    )
    np.testing.assert_allclose(null, again, rtol=0, atol=1e-6)


BAD = [
    (rsa.rsa, {"method": "kendall"}, "method"),
    (rsa.rsa, {"rdm": "cosine"}, "rdm"),
    (rsa.rsa, {"max_points": 2}, "max_points"),
    (rsa.rsa, {"seed": -1}, "seed"),
    (lp.linear_predictivity, {"folds": 1}, "folds"),
    (lp.linear_predictivity, {"folds": 9}, "folds"),
    (lp.linear_predictivity, {"ridge": -0.5}, "ridge"),
    (lp.linear_predictivity, {"seed": 2**32}, "seed"),
]


@pytest.mark.parametrize("fn, options, name", BAD, ids=[f"{f.__name__}-{o}" for f, o, _ in BAD])
def test_bad_options_give_one_line_errors(fn, options, name):
    x = np.random.default_rng(0).standard_normal((12, 3)).astype(np.float32)
    mask = np.arange(12) < 8
    with pytest.raises(ArgumentError) as err:
        fn(x, x[:, :2], mask, **options)
    assert name in str(err.value) and "\n" not in str(err.value)
