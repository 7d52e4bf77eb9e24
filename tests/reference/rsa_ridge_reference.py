"""Write tests/fixtures/rsa_ridge_reference.npz: rsatoolbox and scikit-learn values for
tests/test_similarity_rsa_ridge.py (RSA and cross-validated ridge predictivity).

Runs in the ``make bench-env`` environment (rsatoolbox 0.3.2, scikit-learn), never
imports geom_jax:

  .bench-venv/bin/python tests/reference/rsa_ridge_reference.py \
      tests/fixtures/rsa_ridge_reference.npz

Every value is float64, computed from the float32 points (cast to float64 first),
on the valid rows only. Keys:

* ``x`` [C, N, Dx], ``y`` [C, N, Dy] (float32, N = 120, Dx = 24, Dy = 9) and
  ``mask`` [C, N] (bool), C = 5 cases named by ``cases`` [C] (str):
  - ``gauss``: independent standard Gaussian clouds;
  - ``curved``: x = tanh(z A) + noise + 3, y = sin(z B) + noise - 2 of one shared
    3-d Gaussian latent z (noise 0.1);
  - ``duplicates``: ``curved`` whose last 30 rows copy earlier rows (in x and y
    alike): exact ties in both dissimilarity matrices;
  - ``lattice``: points with coordinates in {0, 1} (y: the first 9 coordinates of a
    second draw agreeing with x on 60% of them), the first two coordinates 0 and 1
    in both (no point's pattern is constant): squared distances are small integers,
    exact in float64 and, on points kept on their grid, in float32; large tie groups;
  - ``masked``: ``curved`` with 23 invalid rows (``mask`` False there); the tests
    fill those rows with garbage;
* ``rsa`` [C, 2, 2]: rsatoolbox ``compare(calc_rdm(Dataset(x), method=RDM),
  calc_rdm(Dataset(y), method=RDM), method=METHOD)`` with METHOD in ("spearman",
  "corr") (first index) and RDM in ("correlation", "euclidean") (second index);
* ``ridge_settings`` [S, 3]: (folds, ridge, seed) of the S = 3 ridge settings;
* ``ridge_xy`` [C, S] and ``ridge_yx`` [C, S]: held-out R^2 of y predicted from x
  (and x from y): over the splits of ``KFold(n_splits=folds, shuffle=True,
  random_state=seed)`` of the valid rows, ``Ridge(alpha=ridge, fit_intercept=True)``
  fitted on each training split, R^2 = 1 - sum of squared held-out errors / sum of
  squared deviations of the held-out targets from their training split's mean,
  both pooled over folds and output dimensions;
* ``ridge_groups`` [F, Q] (int32): the held-out row indices (into the N rows) of each
  KFold split of the ``masked`` case's valid rows for setting 0, ascending, padded
  with -1 (Q = ceil(N / F));
* the subsample case, N = 300 points of Dx = 24, Dy = 9 (``curved`` points) with 40
  invalid: ``sub_x`` [300, 24], ``sub_y`` [300, 9], ``sub_mask`` [300];
  ``sub_max_points`` [2] = (100, 280), ``sub_seed`` (int, 3);
  ``sub_index_100`` [100] and ``sub_index_280`` [280] (int32): the subsample,
  all N points when N <= max_points, else the valid points with the smallest
  h(i) = fmix32(i xor fmix32(seed)) (MurmurHash3's 32-bit finaliser on uint32),
  invalid points after them when fewer than max_points are valid, in index order;
  ``sub_rsa`` [2, 2, 2]: ``rsa`` as above on the valid points of each subsample
  (first index: max_points 100, 280).
"""

import argparse

import numpy as np
from rsatoolbox.data import Dataset
from rsatoolbox.rdm import calc_rdm, compare
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

N, DX, DY = 120, 24, 9
CASES = ("gauss", "curved", "duplicates", "lattice", "masked")
METHODS = ("spearman", "corr")
RDMS = ("correlation", "euclidean")
RIDGE_SETTINGS = ((5, 1.0, 0), (3, 0.01, 11), (7, 100.0, 2))


def rsa_values(x, y):
    """[2, 2]: rsatoolbox RSA for METHODS x RDMS."""
    out = np.zeros((2, 2))
    for j, rdm in enumerate(RDMS):
        rx = calc_rdm(Dataset(np.asarray(x, np.float64)), method=rdm)
        ry = calc_rdm(Dataset(np.asarray(y, np.float64)), method=rdm)
        for i, method in enumerate(METHODS):
            out[i, j] = compare(rx, ry, method=method)[0, 0]
    return out


def ridge_r2(x, y, folds, ridge, seed):
    """Held-out R^2 pooled over KFold splits and output dimensions (module docstring)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    sse = sst = 0.0
    for train, test in KFold(n_splits=folds, shuffle=True, random_state=seed).split(x):
        model = Ridge(alpha=ridge, fit_intercept=True).fit(x[train], y[train])
        sse += np.sum((y[test] - model.predict(x[test])) ** 2)
        sst += np.sum((y[test] - y[train].mean(axis=0)) ** 2)
    return 1.0 - sse / sst


def kfold_groups(mask, folds, seed):
    rows = np.flatnonzero(mask)
    out = np.full((folds, -(-len(mask) // folds)), -1, np.int32)
    for f, (_, test) in enumerate(KFold(folds, shuffle=True, random_state=seed).split(rows)):
        out[f, : len(test)] = np.sort(rows[test])
    return out


def fmix32(h):
    h = np.asarray(h, np.uint32)
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def subsample(mask, max_points, seed):
    n = len(mask)
    if n <= max_points:
        return np.arange(n, dtype=np.int32)
    prio = fmix32(np.arange(n, dtype=np.uint32) ^ fmix32(np.array([seed], np.uint32)))
    order = np.lexsort((prio, ~mask))
    return np.sort(order[:max_points]).astype(np.int32)


def curved(rng, n):
    z = rng.standard_normal((n, 3))
    x = np.tanh(z @ rng.standard_normal((3, DX))) + 0.1 * rng.standard_normal((n, DX)) + 3.0
    y = np.sin(z @ rng.standard_normal((3, DY))) + 0.1 * rng.standard_normal((n, DY)) - 2.0
    return x.astype(np.float32), y.astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    args = parser.parse_args()
    rng = np.random.default_rng(2008)
    xs, ys, masks = [], [], []
    for case in CASES:
        mask = np.ones(N, bool)
        if case == "gauss":
            x = rng.standard_normal((N, DX)).astype(np.float32)
            y = rng.standard_normal((N, DY)).astype(np.float32)
        elif case == "lattice":
            x = (rng.random((N, DX)) < 0.5).astype(np.float32)
            other = (rng.random((N, DX)) < 0.5).astype(np.float32)
            y = np.where(rng.random((N, DX)) < 0.6, x, other)[:, :DY]
            x[:, :2] = y[:, :2] = (0.0, 1.0)  # no constant pattern (correlation RDM)
        else:
            x, y = curved(rng, N)
        if case == "duplicates":
            src = rng.choice(N - 30, 30, replace=False)
            x[N - 30 :], y[N - 30 :] = x[src], y[src]
        if case == "masked":
            mask[rng.choice(N, 23, replace=False)] = False
        xs.append(x)
        ys.append(y)
        masks.append(mask)
    out = {
        "cases": np.array(CASES),
        "x": np.stack(xs),
        "y": np.stack(ys),
        "mask": np.stack(masks),
        "ridge_settings": np.array(RIDGE_SETTINGS, np.float64),
    }
    out["rsa"] = np.stack([rsa_values(x[m], y[m]) for x, y, m in zip(xs, ys, masks)])
    for name, (a, b) in (("ridge_xy", (xs, ys)), ("ridge_yx", (ys, xs))):
        out[name] = np.array(
            [[ridge_r2(p[m], q[m], *s) for s in RIDGE_SETTINGS] for p, q, m in zip(a, b, masks)]
        )
    out["ridge_groups"] = kfold_groups(masks[-1], *RIDGE_SETTINGS[0][::2])

    x, y = curved(rng, 300)
    mask = np.ones(300, bool)
    mask[rng.choice(300, 40, replace=False)] = False
    out.update(sub_x=x, sub_y=y, sub_mask=mask, sub_max_points=np.array([100, 280]), sub_seed=3)
    sub_rsa = []
    for p in (100, 280):
        index = subsample(mask, p, 3)
        out[f"sub_index_{p}"] = index
        keep = index[mask[index]]
        sub_rsa.append(rsa_values(x[keep], y[keep]))
    out["sub_rsa"] = np.stack(sub_rsa)
    np.savez_compressed(args.out, **out)


if __name__ == "__main__":
    main()
