"""information_imbalance against DADApy 0.3.4 (stored fixtures; full ranks, so DADApy is
exact), between representations of different dimensions and on dataset-size clouds.

Tolerance: the rank rule (tests/helpers/tolerances.py, information_imbalance_atol), from the
inputs: a point whose nearest neighbour float32 cannot single out, or whose rank float32
cannot count exactly on the Gram keys, moves Delta by 2 / N^2 per rank it may be off;
DADApy's float64 ranks lie inside the same window. The rest is one rounding.
"""

import os

import numpy as np
import pytest
from helpers import tolerances

from geom_jax import metrics

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="module")
def dadapy():
    return np.load(os.path.join(FIXTURES, "similarity_reference.npz"))


@pytest.fixture(scope="module")
def clouds():
    return np.load(os.path.join(FIXTURES, "clouds_reference.npz"))


def _check(x, y, want, mask=None, where=""):
    """Delta(x -> y), Delta(y -> x) against DADApy's want at the rule's tolerance."""
    got = metrics.information_imbalance(x, y, mask)
    atol = tolerances.information_imbalance_atol(x, y, mask)
    tolerances.assert_rank_field(got, want, "info_imbalance", atol, where)
    return atol


def test_different_dimensions_match_dadapy(dadapy, clouds):
    x, y = dadapy["curved/x"], dadapy["curved/y"]
    assert x.shape[-1] != y.shape[-1]
    _check(x, y, dadapy["curved/info_imbalance"], where="curved: ")
    _check(y, x, dadapy["curved/info_imbalance"][::-1], where="curved, reversed: ")
    rows = dadapy["smollm2/rows"]
    x = clouds["smollm2_last_token/points"][2, rows]
    _check(x, dadapy["smollm2/y"], dadapy["smollm2/info_imbalance"], where="smollm2: ")


def test_masked_points_are_left_out(dadapy):
    """DADApy saw only the valid points; here the invalid rows hold large garbage."""
    x, y, mask = dadapy["curved/x"].copy(), dadapy["curved/y"].copy(), dadapy["curved_masked/mask"]
    rng = np.random.default_rng(0)
    x[~mask] = 1e3 * rng.standard_normal(x[~mask].shape)
    y[~mask] = x[~mask][:, : y.shape[1]]
    _check(x, y, dadapy["curved_masked/info_imbalance"], mask, "masked: ")


@pytest.mark.parametrize("case", ["manifold", "smollm2_last_token"])
def test_consecutive_layers_of_dataset_clouds_match_dadapy(clouds, case):
    points = clouds[f"{case}/points"]
    _check(points[:-1], points[1:], clouds[f"{case}/info_imbalance"], where=f"{case}: ")
