"""Permutation nulls of the similarity measures and their calibration (Gröger, Wen, Brbić
2026, arXiv 2602.14486) against calibrated-similarity 0.1.1 and in distribution."""

import numpy as np
import pytest
from scipy import stats

from geom_jax import metrics
from geom_jax.errors import ArgumentError
from geom_jax.metrics.similarity import measure, nulls

FIXTURES = "tests/fixtures/null_reference.npz"
KS_LEVEL = 0.01
"""Level of the Kolmogorov-Smirnov test that the p-values of independent clouds are uniform."""


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURES) as z:
        return {k: z[k] for k in z.files}


def _null(x, y, perms, name="cka"):
    resolved = measure.resolve_all((name,), {})
    valid = np.ones((1, x.shape[-2]), bool)
    raw, null = measure.stack_scores(resolved, x[None], y[None], valid, perms[None])
    return np.asarray(raw[name][0]), np.asarray(null[name][0])


@pytest.mark.parametrize("case", ["shared", "independent"])
def test_calibration_equals_reference(ref, case):
    x, y = ref[f"{case}/x"], ref[f"{case}/y"]
    raw, null = _null(x[None], y[None], ref["perms"].astype(np.int32))
    out = nulls.calibrate(raw, null, similarity=True, best=1.0, alpha=0.05)
    # float32 CKA against float64: 1e-6; no null score lies that close to the observed one
    np.testing.assert_allclose(raw[0, 0], ref[f"{case}/raw"], atol=1e-6)
    # the reference computes its p-value in float32: equal counts, 1e-7 apart
    assert out["p_value"][0, 0] == pytest.approx(float(ref[f"{case}/p_value"]), abs=1e-7)
    np.testing.assert_allclose(out["tau"][0, 0], ref[f"{case}/tau"], atol=2e-6)
    np.testing.assert_allclose(out["calibrated"][0, 0], ref[f"{case}/calibrated"], atol=2e-6)


def test_maximum_over_layer_pairs_equals_reference(ref):
    raw, null = _null(ref["layers/x"], ref["layers/y"], ref["perms"].astype(np.int32))
    out = nulls.calibrate(raw, null, alpha=0.05)
    assert out["max_p_value"] == pytest.approx(float(ref["layers/max_p_value"]), abs=1e-7)
    np.testing.assert_allclose(out["max_calibrated"], ref["layers/max_calibrated"], atol=2e-6)
    assert raw.shape == (3, 2) and out["best_match_p_value"].shape == (3,)
    # the best match of layer 1 (the shared one) survives the null of its row maximum
    assert out["best_match_p_value"][1] <= 0.01 < out["best_match_p_value"][0]


def test_distance_is_read_as_negative_similarity():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.2, 1.0, size=(2, 3))
    null = rng.uniform(0.2, 1.0, size=(40, 2, 3))
    as_sim = nulls.calibrate(1.0 - raw, 1.0 - null, similarity=True, best=1.0)
    as_dist = nulls.calibrate(raw, null, similarity=False, best=0.0)
    for f in ("p_value", "calibrated", "best_match_p_value", "max_p_value", "max_calibrated"):
        np.testing.assert_allclose(as_dist[f], as_sim[f], atol=1e-12, err_msg=f)
    np.testing.assert_allclose(as_dist["tau"], 1.0 - as_sim["tau"], atol=1e-12)


def test_permutations_move_valid_points_only():
    valid = np.ones((2, 12), bool)
    valid[1, [0, 5, 11]] = False
    perms = measure.valid_permutations(valid, 30, seed=3)
    assert perms.shape == (2, 30, 12)
    for b in range(2):
        for p in perms[b]:
            assert sorted(p) == list(range(12))
            assert np.all(valid[b][p] == valid[b])
            assert np.all(p[~valid[b]] == np.flatnonzero(~valid[b]))
    assert not np.array_equal(perms[0, 0], perms[0, 1])
    np.testing.assert_array_equal(perms, measure.valid_permutations(valid, 30, seed=3))


def _independent(rng, clouds, n, dx, dy):
    return (
        rng.normal(size=(clouds, n, dx)).astype(np.float32),
        rng.normal(size=(clouds, n, dy)).astype(np.float32),
    )


def _shared(rng, n, dx, dy):
    z = rng.normal(size=(n, 3))
    x = np.tanh(z @ rng.normal(size=(3, dx))) + 0.05 * rng.normal(size=(n, dx))
    y = 0.2 * (z @ rng.normal(size=(3, dy))) ** 2 + z @ rng.normal(size=(3, dy))
    return x.astype(np.float32), (y + 0.05 * rng.normal(size=(n, dy))).astype(np.float32)


@pytest.mark.parametrize("name", measure.names())
def test_pvalues_uniform_for_independent_clouds(name):
    rng = np.random.default_rng(11)
    x, y = _independent(rng, 40, 80, 6, 5)
    out = metrics.similarity_null(x, y, measure=name, permutations=49, seed=5)
    p = np.asarray(out["p_value"])
    assert p.shape == (40,) and np.all((p > 0) & (p <= 1))
    assert stats.kstest(p, "uniform").pvalue > KS_LEVEL, np.sort(p)
    assert np.all(out["calibrated"][p > 0.05] == 0.0)


@pytest.mark.parametrize("name", measure.names())
def test_shared_structure_is_significant(name):
    x, y = _shared(np.random.default_rng(2), 120, 10, 6)
    out = metrics.similarity_null(x, y, measure=name, permutations=199, seed=0)
    assert float(out["p_value"]) < 0.01
    assert 0.0 < float(out["calibrated"]) <= 1.0


def test_layer_similarity_null_fields():
    rng = np.random.default_rng(4)
    x, y = _shared(rng, 60, 8, 5)
    noise = rng.normal(size=x.shape).astype(np.float32)
    stack_a = np.stack([noise, x])
    stack_b = np.stack([y, rng.normal(size=y.shape).astype(np.float32)])
    out = metrics.layer_similarity(
        stack_a, stack_b, measures=("cka", "mutual_knn"), null_permutations=39, null_seed=1
    )
    for m in ("cka", "mutual_knn"):
        assert out[m].shape == (2, 2)
        for f in ("null_mean", "null_std", "p_value", "tau", "calibrated"):
            assert out[f"{m}/{f}"].shape == (2, 2)
        assert out[f"{m}/best_match_p_value"].shape == (2,)
        assert out[f"{m}/p_value"][1, 0] == pytest.approx(1 / 40)
        assert out[f"{m}/p_value"][0, 1] > 0.05
    one = metrics.similarity_null(x, y, measure="cka", permutations=39, seed=1)
    # the same permutations of y's rows whichever layers stand beside it
    assert float(one["p_value"]) == out["cka/p_value"][1, 0]
    assert float(one["raw"]) == pytest.approx(float(out["cka"][1, 0]), abs=1e-6)


BAD = {
    "few_permutations": (
        lambda x, y: metrics.similarity_null(x, y, measure="cka", permutations=10),
        "permutations=10 is too few for a p-value",
    ),
    "no_permutations": (
        lambda x, y: metrics.similarity_null(x, y, measure="cka", permutations=0),
        "too few for a p-value",
    ),
    "layer_similarity_permutations": (
        lambda x, y: metrics.layer_similarity(x[None], y[None], null_permutations=19),
        "null_permutations=19 is too few",
    ),
    "alpha": (
        lambda x, y: metrics.similarity_null(x, y, measure="cka", null_alpha=1.5),
        "alpha must be in \\(0, 1\\)",
    ),
    "unknown_measure": (
        lambda x, y: metrics.similarity_null(x, y, measure="cka_rbff"),
        "unknown measure 'cka_rbff'",
    ),
    "stray_option": (
        lambda x, y: metrics.similarity_null(x, y, measure="cka", k=5),
        "no measure of cka takes k",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(case):
    x, y = _independent(np.random.default_rng(0), 1, 30, 4, 3)
    fn, message = BAD[case]
    with pytest.raises(ArgumentError, match=message):
        fn(x[0], y[0])


@pytest.mark.parametrize("name", measure.names())
def test_null_scores_equal_scores_of_permuted_points(name):
    rng = np.random.default_rng(9)
    x, y = _shared(rng, 50, 7, 4)
    valid = np.ones((1, 50), bool)
    valid[0, [3, 17]] = False
    y[3] = np.nan
    perms = measure.valid_permutations(valid, 3, seed=2)
    resolved = measure.resolve_all((name,), {})
    _, null = measure.stack_scores(resolved, x[None, None], y[None, None], valid, perms)
    for p in range(3):
        direct = measure.evaluate(name, x, y[perms[0, p]], valid[0])
        # the relabelled statistics are the permuted points' own: float32 rounding apart
        np.testing.assert_allclose(np.asarray(null[name])[0, p, 0, 0], direct, atol=2e-6)
