"""Numerical honesty of layer_geometry: non-finite clouds give NaN (eager and
under jit), the scale of a cloud does not matter, ordinary clouds give what
they gave before these guards (goldens from another processor, compared at
float32 reordering tolerance), and (near-)duplicate tokens do not produce IDs
from rounding noise."""

import functools
import os

import jax
import numpy as np
import pytest
from helpers import pinned_outputs, tolerances

from geom_jax import metrics, pipeline
from geom_jax.metrics.measures import intrinsic_dimension

FIELDS = pinned_outputs.DEGENERATE_FIELDS
FLOAT_FIELDS = FIELDS[:-1]


def test_ordinary_clouds_match_the_code_before_the_guards():
    """Golden outputs of the code before the rescale / finiteness / near-duplicate
    guards (tests/fixtures/README.md), written on another processor: the stated
    tolerance per field (tests/helpers/tolerances.py). The dense 1-D curve has a genuine
    pair closer than the default tolerance, so it is compared with the test off."""
    with np.load(os.path.join(pinned_outputs.FIXTURES, pinned_outputs.DEGENERATE_FILE)) as z:
        golden = dict(z)
    cases = pinned_outputs.ordinary_cases()
    assert set(golden) == {f"{name}/{f}" for name in cases for f in FIELDS}
    for name, (x, mask, kw) in cases.items():
        geo = pinned_outputs.ordinary_geometry(name, x, mask, kw)
        for f in FIELDS:
            atol = pinned_outputs.golden_atol(f"{pinned_outputs.DEGENERATE_FILE}:{name}/{f}")
            want = golden[f"{name}/{f}"]
            tolerances.assert_matches_golden(getattr(geo, f), want, f, name + "/", atol)
        assert np.asarray(geo.finite).all()


SHAPE = (2, 3, 128, 16)  # one shape and one set of options: one compilation for most tests
KW = dict(range_max=32, max_k=8)


def _hidden(seed=0):
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def _stack(cloud):
    """A [N, D] cloud as every prompt and layer of a SHAPE stack."""
    return np.broadcast_to(cloud, SHAPE).astype(np.float32)


_eager = functools.partial(metrics.layer_geometry, **KW)
_jitted = jax.jit(_eager)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_non_finite_layer_is_nan_there_only(bad, jit):
    h = _hidden()
    clean = _eager(h)
    h[1, 1, 17, 3] = bad
    geo = _jitted(h) if jit else _eager(h)
    finite = np.asarray(geo.finite)
    assert not finite[1, 1] and finite.sum() == finite.size - 1
    assert int(geo.n_unique[1, 1]) == 0
    status = np.asarray(pipeline.layer_status("paper", geo, np.ones(SHAPE[:1] + SHAPE[2:3], bool)))
    assert status[1, 1] == pipeline.STATUS_NON_FINITE and (np.delete(status, 4) == 0).all()
    # The other prompts and layers: the same compiled computation on the same float32
    # values, eager or under jit, so every field (overlap too) is bit for bit.
    for f in FLOAT_FIELDS:
        got, ref = np.asarray(getattr(geo, f)), np.asarray(getattr(clean, f))
        if f == "overlap":  # both pairs (0, 1) and (1, 2) involve layer 1
            assert np.isnan(got[1]).all(), f
        else:
            assert np.isnan(got[1, 1]).all(), f
            np.testing.assert_array_equal(np.delete(got[1], 1, 0), np.delete(ref[1], 1, 0), f)
        np.testing.assert_array_equal(got[0], ref[0], f)


def test_non_finite_padding_does_not_count():
    h = _hidden()
    mask = np.ones(SHAPE[:1] + SHAPE[2:3], bool)
    mask[1, 120:] = False
    h[1, :, 122] = np.nan
    geo = metrics.layer_geometry(h, mask, **KW)
    assert np.asarray(geo.finite).all() and np.isfinite(np.asarray(geo.gride_ids)).all()


@pytest.mark.parametrize("factor", [1e20, 1e-30, 2.0**-60])
def test_scale_of_the_cloud_does_not_matter(factor):
    h = _hidden(1)
    ref = _eager(h)
    scaled = h * np.float32(factor)
    geo = _eager(scaled)
    for f in ("gride_ids", "gride_errs", "twonn", "twonn_ml", "cos_mean", "cos_std"):
        np.testing.assert_allclose(getattr(geo, f), getattr(ref, f), rtol=1e-5, err_msg=f)
    # Rank-derived fields: the rank rules of both inputs (the scaled one rounds each
    # coordinate, u relative, which moves these clouds' squared distances far less
    # than the rules' windows)
    atols = [tolerances.layer_geometry_atols(c, max_k=KW["max_k"]) for c in (h, scaled)]
    for f in ("overlap", "n_unique"):
        atol = atols[0][f] + atols[1][f]
        tolerances.assert_rank_field(getattr(geo, f), getattr(ref, f), f, atol, f"x{factor}: ")
    np.testing.assert_allclose(np.asarray(geo.gride_scales) / factor, ref.gride_scales, rtol=1e-5)
    if np.log2(factor).is_integer():  # exact in binary: bit for bit
        np.testing.assert_array_equal(geo.gride_ids, ref.gride_ids)


def test_rounding_noise_copies_count_as_one_point():
    """32 distinct points, each repeated 4 times with float32-level noise
    (1e-7 relative): with the default tolerance GRIDE and TwoNN see the 32
    points (the same IDs as exact copies), with tolerance 0 the noise."""
    rng = np.random.default_rng(2)
    base = rng.standard_normal((32, 16)).astype(np.float32) * 5 + 20
    noise = rng.standard_normal((3, 32, 16)).astype(np.float32) * 1e-7
    noisy = _stack(np.concatenate([base[None], base[None] * (1 + noise)]).reshape(128, 16))
    geo = _eager(noisy)
    ref = _eager(_stack(np.concatenate([base] * 4)))
    assert (np.asarray(geo.n_unique) == 32).all() and (np.asarray(ref.n_unique) == 32).all()
    # ... far from where float32 could decide the near-duplicate threshold
    assert tolerances.n_unique_atol(noisy[0, 0]) == 0
    for f in ("gride_ids", "twonn"):
        np.testing.assert_allclose(getattr(geo, f), getattr(ref, f), rtol=1e-4, err_msg=f)
    raw = _eager(noisy, duplicate_tolerance=0.0)
    assert (np.asarray(raw.n_unique) == 128).all()
    assert abs(float(raw.twonn[0, 0]) / float(ref.twonn[0, 0]) - 1) > 0.5


def test_one_repeated_vector_gives_no_id():
    """A prompt of one repeated token: near-identical vectors (rounding noise,
    2e-6 relative, as SmolLM2 gives) have no intrinsic dimension; without the
    tolerance the estimators return finite IDs measured on the noise."""
    rng = np.random.default_rng(3)
    v = rng.standard_normal(16).astype(np.float32) * 30
    cloud = (v * (1 + 2e-6 * rng.standard_normal(SHAPE))).astype(np.float32)
    geo = _eager(cloud)
    assert (np.asarray(geo.n_unique) == 1).all()
    assert not any(tolerances.n_unique_atol(layer) for layer in cloud.reshape((-1,) + SHAPE[2:]))
    assert np.isnan(np.asarray(geo.gride_ids)).all() and np.isnan(np.asarray(geo.twonn)).all()
    raw = _eager(cloud, duplicate_tolerance=0.0)
    assert np.isfinite(np.asarray(raw.gride_ids)).all()


def test_gride_nan_at_scales_the_distinct_points_cannot_support():
    rng = np.random.default_rng(4)
    pts = rng.standard_normal((20, 16)).astype(np.float32)
    cloud = np.concatenate([pts, np.repeat(pts[:1], 108, 0)])  # 20 distinct
    geo = _eager(_stack(cloud))
    ids = np.asarray(geo.gride_ids)[0, 0]  # n1 = 1, 2, 4, 8, 16 (n2 = 2 n1 <= 19)
    assert int(geo.n_unique[0, 0]) == 20 and tolerances.n_unique_atol(cloud) == 0
    assert np.isfinite(ids[:4]).all() and np.isnan(ids[4:]).all()
    status = np.asarray(pipeline.layer_status("paper", geo, np.ones(SHAPE[:1] + SHAPE[2:3], bool)))
    few, dup = intrinsic_dimension.STATUS_FEW_DISTINCT, intrinsic_dimension.STATUS_DUPLICATES
    assert (status == few | dup).all()


def test_pipeline_refuses_bad_token_ids():
    with pytest.raises(ValueError, match=r"input_ids\[0, 3\] = 50 is outside .* \[0, 50\)"):
        pipeline.check_token_ids(np.array([[1, 2, 3, 50]]), 50)
    with pytest.raises(ValueError, match="input_ids must be integer token ids, got dtype float"):
        pipeline.check_token_ids(np.array([[1.0, 2.5]]), 50)
    with pytest.raises(ValueError, match=r"= -1 is outside"):
        pipeline.check_token_ids(np.array([[-1, 2]]), 50)
    assert pipeline.check_token_ids(np.array([[0, 49]], np.int64), 50).dtype == np.int32


@pytest.mark.parametrize("offset", [0.0, 0.3e-5, 0.9e-5, 1.1e-5, 3e-5, 1e-3])
def test_near_duplicate_prefilter_keeps_the_same_points(offset):
    """The Gram-bound pre-filter of near_duplicates (distinct=...) skips the
    arg-min search only where it cannot flag a distinct point: planted copies
    at relative distances around the 1e-5 tolerance keep the same points."""
    from geom_jax.metrics.neighbours import distances, duplicates

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 80, 24)) * 4 + 7).astype(np.float32)
    rms = np.sqrt(np.mean(np.sum(x.astype(np.float64) ** 2, -1), -1))
    direction = rng.standard_normal(24)
    direction /= np.linalg.norm(direction)
    x[1, 50] = x[1, 10] + (offset * rms[1] * direction).astype(np.float32)
    x[2, 60] = x[2, 5]  # an exact duplicate as well
    valid = np.ones((3, 80), bool)
    valid[0, 70:] = False
    gram, _ = distances.centred_gram(x, valid)
    keep = duplicates.first_occurrence(x, valid)
    searched = keep & ~duplicates.near_duplicates(x, valid, gram)
    filtered = keep & ~duplicates.near_duplicates(x, valid, gram, distinct=keep)
    np.testing.assert_array_equal(filtered, searched)
    # the planted pair is near the tolerance, but not where float32 could decide it
    assert tolerances.n_unique_atol(x[1], valid[1]) == 0
    assert bool(searched[1, 50]) == (offset > 1.01e-5)
    assert not searched[2, 60]
    # distinct_points skips hashing and search per batch when no two valid points can
    # be that close: clouds 1 and 2 need them, cloud 0 alone does not
    np.testing.assert_array_equal(duplicates.distinct_points(x, valid, gram), searched)
    alone = duplicates.distinct_points(x[:1], valid[:1], gram[:1])
    np.testing.assert_array_equal(alone, valid[:1])
    exact_only = duplicates.distinct_points(x, valid, gram, tolerance=0.0)
    np.testing.assert_array_equal(exact_only, keep)
    assert bool(exact_only[1, 50]) == (offset > 0)
