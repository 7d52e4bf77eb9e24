"""information_imbalance against DADApy 0.3.4 (stored fixtures; full ranks, so DADApy is
exact), between representations of different dimensions and on dataset-size clouds.

Tolerance 1e-4 (the fixtures' README): a rank off by one from a float32 Gram rounding
moves Delta by 2 / N^2.
"""

import os

import numpy as np
import pytest

from geom_jax import metrics

TOL = 1e-4
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="module")
def dadapy():
    return np.load(os.path.join(FIXTURES, "similarity_reference.npz"))


@pytest.fixture(scope="module")
def clouds():
    return np.load(os.path.join(FIXTURES, "clouds_reference.npz"))


def test_different_dimensions_match_dadapy(dadapy, clouds):
    x, y = dadapy["curved/x"], dadapy["curved/y"]
    assert x.shape[-1] != y.shape[-1]
    got = metrics.information_imbalance(x, y)
    np.testing.assert_allclose(got, dadapy["curved/info_imbalance"], atol=TOL, rtol=0)
    got = metrics.information_imbalance(y, x)
    np.testing.assert_allclose(got, dadapy["curved/info_imbalance"][::-1], atol=TOL, rtol=0)
    rows = dadapy["smollm2/rows"]
    x = clouds["smollm2_last_token/points"][2, rows]
    got = metrics.information_imbalance(x, dadapy["smollm2/y"])
    np.testing.assert_allclose(got, dadapy["smollm2/info_imbalance"], atol=TOL, rtol=0)


def test_masked_points_are_left_out(dadapy):
    """DADApy saw only the valid points; here the invalid rows hold large garbage."""
    x, y, mask = dadapy["curved/x"].copy(), dadapy["curved/y"].copy(), dadapy["curved_masked/mask"]
    rng = np.random.default_rng(0)
    x[~mask] = 1e3 * rng.standard_normal(x[~mask].shape)
    y[~mask] = x[~mask][:, : y.shape[1]]
    got = metrics.information_imbalance(x, y, mask)
    np.testing.assert_allclose(got, dadapy["curved_masked/info_imbalance"], atol=TOL, rtol=0)


@pytest.mark.parametrize("case", ["manifold", "smollm2_last_token"])
def test_consecutive_layers_of_dataset_clouds_match_dadapy(clouds, case):
    points = clouds[f"{case}/points"]
    got = metrics.information_imbalance(points[:-1], points[1:])
    np.testing.assert_allclose(got, clouds[f"{case}/info_imbalance"], atol=TOL, rtol=0)
