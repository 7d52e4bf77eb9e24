"""Writes tests/fixtures/gride_large_range.npz: DADApy 0.3.4 GRIDE at large ranges.

Run once in the ``make bench-env`` environment (never imports geom_jax):

  .bench-venv/bin/python tests/reference/gride_large_range.py tests/fixtures/gride_large_range.npz

The points (stored in the file, float32 [20000, 16]) are a curved 5-d manifold
with noise: latent z ~ N(0, I_5) (seed 8192), 2 tanh(z W1 / sqrt(5)) W2 into
16 dims plus 0.02 isotropic noise. Stored: ``points``, and for
``n`` = 20000 / 5000 (the first n points) with range_max 8192 / 2048:
``gride_ids_{n}``, ``gride_errs_{n}``, ``gride_scales_{n}`` from
``Data(X).compute_distances(maxk=range_max)`` and
``return_id_scaling_gride(range_max=range_max)``.
"""

import argparse

import numpy as np

CASES = ((20000, 8192), (5000, 2048))


def points(seed=8192, n=20000, latent=5, dim=16):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent))
    w1 = rng.standard_normal((latent, 32)) / np.sqrt(latent)
    w2 = rng.standard_normal((32, dim)) / np.sqrt(32)
    x = 2.0 * np.tanh(z @ w1) @ w2 + 0.02 * rng.standard_normal((n, dim))
    return x.astype(np.float32)


def main():
    from dadapy import Data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    out = parser.parse_args().out
    x = points()
    assert len(np.unique(x, axis=0)) == len(x)
    arrays = {"points": x}
    for n, range_max in CASES:
        data = Data(coordinates=x[:n].astype(np.float64), maxk=range_max, verbose=False)
        data.compute_distances(maxk=range_max)
        ids, errs, scales = data.return_id_scaling_gride(range_max=range_max)
        arrays[f"gride_ids_{n}"] = ids
        arrays[f"gride_errs_{n}"] = errs
        arrays[f"gride_scales_{n}"] = scales
        print(n, range_max, np.round(ids, 3))
    np.savez_compressed(out, **arrays)


if __name__ == "__main__":
    main()
