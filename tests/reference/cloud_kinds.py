"""Synthetic clouds shared by the fixture generators of the per-cloud estimators
(id_battery_reference.py, density_reference.py): float64 NumPy, seeded by the caller."""

import numpy as np


def mixture(rng, n, d):
    """Four Gaussian clusters of n // 4 points, each on a random 3-d plane of R^d around its
    own centre (spread 4), with 0.05 isotropic noise -> (points [n, d], labels [n] int32)."""
    xs, labels = [], []
    for c in range(4):
        basis, _ = np.linalg.qr(rng.standard_normal((d, 3)))
        z = rng.standard_normal((n // 4, 3))
        centre = 4.0 * rng.standard_normal(d)
        xs.append(centre + z @ basis.T + 0.05 * rng.standard_normal((n // 4, d)))
        labels.append(np.full(n // 4, c))
    return np.concatenate(xs), np.concatenate(labels).astype(np.int32)


def curved(rng, n, d):
    """A curved 5-d manifold in R^d: tanh and sin of two random linear maps of a Gaussian
    latent, offset by 3 -> [n, d]."""
    z = rng.standard_normal((n, 5))
    a = rng.standard_normal((5, d)) / np.sqrt(5)
    b = rng.standard_normal((5, d)) / np.sqrt(5)
    return np.tanh(z @ a) + 0.5 * np.sin(z @ b) + 3.0


def padded(rng, points, extra=40):
    """points [n, d] spread over n + extra rows, the extra rows (seeded positions) zero:
    (padded [n + extra, d] float32, mask [n + extra] bool, False at the extra rows)."""
    n, d = points.shape
    rows = np.sort(rng.choice(n + extra, extra, replace=False))
    mask = np.ones(n + extra, bool)
    mask[rows] = False
    out = np.zeros((n + extra, d), np.float32)
    out[mask] = points
    return out, mask
