"""Acceptance 3: GRIDE at its first scale recovers known dimensions (N = 2048 in 128 dims)."""

import numpy as np
import pytest

from geom_jax import metrics

N, D = 2048, 128


def _embed(rng, points):
    rotation, _ = np.linalg.qr(rng.standard_normal((D, D)))
    padded = np.pad(points, ((0, 0), (0, D - points.shape[1])))
    return (padded @ rotation).astype(np.float32)


@pytest.fixture(scope="module")
def first_scale_ids():
    rng = np.random.default_rng(2024)
    t = rng.uniform(1.5 * np.pi, 4.5 * np.pi, N)
    swiss = np.stack([t * np.cos(t), rng.uniform(0, 21, N), t * np.sin(t)], axis=1)
    s = rng.standard_normal((N, 6))
    sphere = s / np.linalg.norm(s, axis=1, keepdims=True)
    gauss = rng.standard_normal((N, 10))
    clouds = np.stack([_embed(rng, swiss), _embed(rng, sphere), _embed(rng, gauss)])
    ids, errs, _ = metrics.gride(clouds, range_max=256)
    return np.asarray(ids)[:, 0], np.asarray(errs)[:, 0]


@pytest.mark.parametrize(
    "which, dim", [(0, 2), (1, 5), (2, 10)], ids=["swiss_roll", "5-sphere", "gauss10"]
)
def test_gride_first_scale_within_10_percent(first_scale_ids, which, dim):
    ids, errs = first_scale_ids
    assert abs(ids[which] - dim) < 0.1 * dim
    assert 0 < errs[which] < 0.1 * dim
