"""Synthetic dataset-scale clouds shaped like one-point-per-prompt LLM representations.

Both kinds are stacks [L, N, D] of float32 "layers" of the same N points, so
that neighbourhoods carry over from layer to layer (the overlap is neither 0
nor 1) and every cloud is free of duplicates and near-ties.

* ``manifold``: a curved ``latent_dim``-dimensional manifold with noise: latent
  z ~ N(0, I_d), a smooth embedding 2 tanh(z W1 / sqrt(d)) W2 into D dims,
  then per layer a residual update h + 0.3 tanh(h M_l) (M_l random, scaled
  1 / sqrt(D)), isotropic noise of 0.05, a common offset that grows with depth
  and four "massive activation" dimensions (40x), as in real residual streams.
* ``gaussian``: an anisotropic Gaussian, variances lambda_i = i^-1 (i = 1..D) in
  a random rotation, each layer the previous plus a small random drift
  (0.1 times the first layer's RMS per coordinate).
"""

import numpy as np

KINDS = ("manifold", "gaussian")


def manifold(layers, points, dim, latent_dim=9, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((points, latent_dim)).astype(np.float32)
    w1 = rng.standard_normal((latent_dim, 64)).astype(np.float32) / np.sqrt(latent_dim)
    w2 = rng.standard_normal((64, dim)).astype(np.float32) / 8.0
    h = 2.0 * np.tanh(z @ w1) @ w2
    offset = rng.standard_normal(dim).astype(np.float32)
    offset[:4] *= 40.0
    out = np.empty((layers, points, dim), np.float32)
    for layer in range(layers):
        mix = rng.standard_normal((dim, dim)).astype(np.float32) / np.sqrt(dim)
        h = h + 0.3 * np.tanh(h @ mix)
        noise = 0.05 * rng.standard_normal((points, dim)).astype(np.float32)
        out[layer] = h + noise + offset * (1.0 + layer / max(layers - 1, 1))
    return out


def gaussian(layers, points, dim, seed=0):
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scale = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    x = (rng.standard_normal((points, dim)).astype(np.float32) * scale) @ rotation.astype(
        np.float32
    )
    rms = float(np.sqrt(np.mean(scale**2)))
    out = np.empty((layers, points, dim), np.float32)
    for layer in range(layers):
        if layer:
            x = x + 0.1 * rms * rng.standard_normal((points, dim)).astype(np.float32)
        out[layer] = x
    return out


def make(kind, layers, points, dim, latent_dim=9, seed=0):
    if kind == "manifold":
        return manifold(layers, points, dim, latent_dim, seed)
    if kind == "gaussian":
        return gaussian(layers, points, dim, seed)
    raise ValueError(f"cloud must be one of {KINDS}, got {kind!r}")
