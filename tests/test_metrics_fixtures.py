"""Acceptance 2: every case of the shared reference fixtures (DADApy 0.3.4, scikit-learn)."""

import os

import numpy as np
import pytest
from helpers import tolerances

from geom_jax import metrics

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "metrics_reference.npz")
REF = np.load(FIXTURES)
CASES = sorted({k.split("/")[0] for k in REF.files})


def ref(case, field):
    return REF[f"{case}/{field}"]


def has_overlap(case):
    return f"{case}/overlap" in REF.files


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    return np.max(np.abs(got[ok] - want[ok]) / np.abs(want[ok]))


def assert_overlap(got, want, points):
    """chi_k against the float64 reference: counts of shared neighbours, so one
    rounding of a ratio of counts plus one step per neighbour pair float32 cannot
    order (the rank rule tolerances.overlap_atol; on llm_layers' 576 coordinates a
    few per k, up to 4.9e-3 at k = 2; at most 1e-3 on the other cases)."""
    atol = tolerances.overlap_atol(points[None], None, got.shape[-1])[0]
    tolerances.assert_rank_field(got, want, "overlap", atol)


def test_fixture_cases_present():
    assert "cube_d8_dups_D40" in CASES and "llm_layers" in CASES and len(CASES) == 6


@pytest.mark.parametrize("case", CASES)
def test_layer_geometry_matches_reference(case):
    points = ref(case, "points")
    geo = metrics.layer_geometry(points, range_max=256, max_k=32)
    assert rel_err(geo.gride_ids, ref(case, "gride_ids")) < 1e-3
    assert rel_err(geo.gride_scales, ref(case, "gride_scales")) < 1e-3
    assert rel_err(geo.gride_errs, ref(case, "gride_errs")) < 1e-2
    assert rel_err(geo.twonn, ref(case, "twonn_base")) < 1e-3
    assert rel_err(geo.twonn_ml, ref(case, "twonn_ml")) < 1e-3
    np.testing.assert_allclose(geo.cos_mean, ref(case, "cos_mean"), rtol=0, atol=1e-5)
    np.testing.assert_allclose(geo.cos_std, ref(case, "cos_std"), rtol=0, atol=1e-5)
    if has_overlap(case):
        want = ref(case, "overlap")
        assert np.all(want[:, 0] == 0)
        assert_overlap(geo.overlap[:, :31], want[:, 1:], points)


@pytest.mark.parametrize("case", ["cube_d8_dups_D40", "llm_layers"])
def test_standalone_functions(case):
    points = ref(case, "points")
    assert rel_err(metrics.twonn(points), ref(case, "twonn_base")) < 1e-3
    assert rel_err(metrics.twonn(points, discard_fraction=0.0), ref(case, "twonn_ml")) < 1e-3
    ids, errs, scales = metrics.gride(points, range_max=256)
    assert rel_err(ids, ref(case, "gride_ids")) < 1e-3
    assert rel_err(errs, ref(case, "gride_errs")) < 1e-2
    assert rel_err(scales, ref(case, "gride_scales")) < 1e-3
    mean, std = metrics.cosine_similarity_stats(points)
    np.testing.assert_allclose(mean, ref(case, "cos_mean"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(std, ref(case, "cos_std"), atol=1e-5, rtol=0)
    if has_overlap(case):
        chi = metrics.neighbourhood_overlap(points[:-1], points[1:], max_k=32)
        assert_overlap(chi[:, :31], ref(case, "overlap")[:, 1:], points)


def test_duplicates_case_drops_duplicates():
    points = ref("cube_d8_dups_D40", "points")
    keep = np.asarray(metrics.unique_mask(points))
    assert keep.sum(axis=-1).tolist() == [984, 984]
    geo = metrics.layer_geometry(points, max_k=8)
    assert geo.n_unique.tolist() == [984, 984]
    # no pair where float32 could decide the near-duplicate threshold
    assert [tolerances.n_unique_atol(layer) for layer in points] == [0, 0]
    # Without dropping them, the first GRIDE scale sees r1 = 0 for the copies.
    assert rel_err(geo.gride_ids, ref("cube_d8_dups_D40", "gride_ids")) < 1e-3
