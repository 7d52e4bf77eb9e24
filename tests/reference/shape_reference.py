"""Write tests/fixtures/shape_reference.npz: netrep and google/svcca values for the tests.

Runs in the ``make bench-env`` environment (NumPy, SciPy, scikit-learn, tqdm), never
imports geom_jax. netrep (github.com/ahwillia/netrep, commit 0186b8a7) and google/svcca
(github.com/google/svcca, commit 1f3fbf19) are not packages on an index: unpack their
sources and name the folders::

  git --git-dir=<netrep mirror> archive 0186b8a7 | tar -x -C /tmp/netrep
  git --git-dir=<svcca mirror> archive 1f3fbf19 cca_core.py pwcca.py | tar -x -C /tmp/svcca
  .bench-venv/bin/python tests/reference/shape_reference.py \
      --netrep /tmp/netrep --svcca /tmp/svcca tests/fixtures/shape_reference.npz

Every value is float64, computed from the float32 points (cast to float64), on the
valid rows only. Keys ``CASE/FIELD``; every case has N = 240 points and (Dx, Dy) =
(24, 10) but ``tie`` (so that the tests compile one program per measure):

* ``gauss``: independent standard Gaussian clouds;
* ``curved``: x = tanh of a 4-d Gaussian latent z mapped by a Gaussian matrix, + 0.1
  noise + 3; y = sin of 3 of z's coordinates mapped likewise, + 0.1 noise - 2 (shared
  structure, different Dx and Dy, large offsets);
* ``masked``: the points of ``curved`` and ``mask`` [240] (bool, 40 False): every value
  is that of the 200 valid rows (the tests put garbage in the others);
* ``duplicates``: two noisy views of one 3-d latent, whose last 40 rows repeat earlier
  rows in both views;
* ``tiny``: ``curved``'s points times 1e-4: netrep clips the eigenvalues of X^T X at
  1e-7, absolute, and here the smallest fall below it (only the shape metric with
  alpha < 1 sees it; the other values equal ``curved``'s);
* ``tie``: x, y [240, 10], two noisy views of one 3-d latent, Dx = Dy: the PWCCA tie.

Fields (x, y and the mask are stored with each case; "centred" is on the valid rows):

* ``procrustes``: min over orthogonal Q of ||X - Y Q||_F, X and Y centred, scaled to
  unit Frobenius norm and the narrower zero-padded to the wider
  (``scipy.linalg.orthogonal_procrustes``; the generator checks it against
  sqrt(2 - 2 ||X^T Y||_*) and netrep ``LinearMetric(alpha=1, score_method="euclidean")``);
* ``shape_alpha1``, ``shape_alpha05``, ``shape_alpha0``: netrep
  ``LinearMetric(alpha, center_columns=True, zero_pad=True, score_method="angular")
  .fit(X, Y).score(X, Y)`` for alpha 1, 0.5, 0 (radians);
* ``svcca_keep099``, ``svcca_keep09``, ``svcca_keep1``: each side centred, SVD, the
  fewest k directions whose variance (squared singular values) reaches the fraction
  keep of the total (keep 1: all, the rank), reduced as in google/svcca's tutorial
  (``s[:k, None] * V[:k]``, [k, N]), then ``np.mean(cca_core.get_cca_similarity(a, b,
  epsilon=0.0)["cca_coef1"])``; ``svcca_k099``, ``svcca_k09`` [2]: the k of each side
  (the generator refuses a case whose cumulative variance lies within 1e-5 of keep);
* ``pwcca``: ``pwcca.compute_pwcca(x_c.T, y_c.T, epsilon=0.0)[0]`` on the centred
  points; when Dx > Dy, ``compute_pwcca(y_c.T, x_c.T)`` (the same value the code means:
  it weights the side with fewer neurons, and its branch for y raises IndexError at
  that commit, google/svcca pull request 9); ``pwcca_yx`` (``tie``, Dx = Dy):
  ``compute_pwcca(y_c.T, x_c.T)``, the other side's weights.
"""

import argparse
import sys
import warnings

import numpy as np
from scipy.linalg import orthogonal_procrustes

KEEPS = {"099": 0.99, "09": 0.9}
ALPHAS = {"1": 1.0, "05": 0.5, "0": 0.0}


def centred(a):
    a = np.asarray(a, np.float64)
    return a - a.mean(0)


def padded(a, d):
    return np.pad(a, ((0, 0), (0, d - a.shape[1])))


def procrustes(x, y, metrics):
    xc, yc = centred(x), centred(y)
    xc, yc = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    d = max(xc.shape[1], yc.shape[1])
    xp, yp = padded(xc, d), padded(yc, d)
    q, _ = orthogonal_procrustes(yp, xp)
    dist = np.linalg.norm(xp - yp @ q)
    nuclear = np.linalg.svd(xc.T @ yc, compute_uv=False).sum()
    euclid = metrics.LinearMetric(alpha=1.0, score_method="euclidean").fit(xc, yc).score(xc, yc)
    assert abs(dist - np.sqrt(max(2 - 2 * nuclear, 0.0))) < 1e-10, (dist, nuclear)
    assert abs(dist - euclid) < 1e-10, (dist, euclid)
    return dist


def shape(x, y, alpha, metrics):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    metric = metrics.LinearMetric(
        alpha=alpha, center_columns=True, zero_pad=True, score_method="angular"
    )
    return metric.fit(x, y).score(x, y)


def kept(a, keep):
    """Fewest leading directions of centred a whose variance reaches keep of the total."""
    s = np.linalg.svd(centred(a), compute_uv=False)
    frac = np.cumsum(s**2) / np.sum(s**2)
    if keep >= 1.0:
        return int(np.sum(s > s[0] * max(a.shape) * np.finfo(np.float64).eps))
    k = int(np.argmax(frac >= keep)) + 1
    near = np.abs(frac - keep).min()
    assert near > 1e-5, f"cumulative variance {near:.2e} from keep={keep}: float32 may differ"
    return k


def reduced(a, k):
    """google/svcca's tutorial: the SVD of the [D, N] centred activations, top k rows."""
    _, s, v = np.linalg.svd(centred(a).T, full_matrices=False)
    return s[:k, None] * v[:k]


def svcca(x, y, keep, cca_core):
    kx, ky = kept(x, keep), kept(y, keep)
    res = cca_core.get_cca_similarity(reduced(x, kx), reduced(y, ky), epsilon=0.0, verbose=False)
    return float(np.mean(res["cca_coef1"])), (kx, ky)


def pwcca_value(x, y, pwcca):
    xc, yc = centred(x), centred(y)
    if xc.shape[1] > yc.shape[1]:
        xc, yc = yc, xc
    return float(pwcca.compute_pwcca(xc.T, yc.T, epsilon=0.0)[0])


def views(rng, n, dx, dy, latent, noise=0.1):
    z = rng.standard_normal((n, latent))
    x = np.tanh(z @ rng.standard_normal((latent, dx))) + noise * rng.standard_normal((n, dx))
    y = np.sin(z[:, : latent - 1] @ rng.standard_normal((latent - 1, dy)))
    y = y + noise * rng.standard_normal((n, dy))
    return x, y


def cases():
    rng = np.random.default_rng(1706)
    n, out = 240, {}
    out["gauss"] = (rng.standard_normal((n, 24)), rng.standard_normal((n, 10)), None)
    x, y = views(rng, n, 24, 10, 4)
    out["curved"] = (x + 3.0, y - 2.0, None)
    mask = np.ones(n, bool)
    mask[rng.choice(n, 40, replace=False)] = False
    out["masked"] = (x + 3.0, y - 2.0, mask)
    x, y = views(rng, n, 24, 10, 3)
    src = rng.integers(0, n - 40, 40)
    x[n - 40 :], y[n - 40 :] = x[src], y[src]
    out["duplicates"] = (x, y, None)
    out["tiny"] = (out["curved"][0] * 1e-4, out["curved"][1] * 1e-4, None)
    x, y = views(rng, n, 10, 10, 3)
    out["tie"] = (x + 1.0, y, None)
    return {k: (a.astype(np.float32), b.astype(np.float32), m) for k, (a, b, m) in out.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--netrep", required=True, help="netrep's source folder")
    parser.add_argument("--svcca", required=True, help="google/svcca's source folder")
    parser.add_argument("out")
    args = parser.parse_args()
    sys.path[:0] = [args.netrep, args.svcca]
    import cca_core
    import pwcca
    from netrep import metrics

    warnings.filterwarnings("ignore")
    out = {}
    for name, (x, y, mask) in cases().items():
        out[f"{name}/x"], out[f"{name}/y"] = x, y
        if mask is not None:
            out[f"{name}/mask"] = mask
        xv, yv = (x, y) if mask is None else (x[mask], y[mask])
        for tag, alpha in ALPHAS.items():
            out[f"{name}/shape_alpha{tag}"] = shape(xv, yv, alpha, metrics)
        out[f"{name}/procrustes"] = procrustes(xv, yv, metrics)
        for tag, keep in KEEPS.items():
            out[f"{name}/svcca_keep{tag}"], ks = svcca(xv, yv, keep, cca_core)
            out[f"{name}/svcca_k{tag}"] = np.array(ks)
        out[f"{name}/svcca_keep1"], _ = svcca(xv, yv, 1.0, cca_core)
        out[f"{name}/pwcca"] = pwcca_value(xv, yv, pwcca)
        if x.shape[1] == y.shape[1]:
            out[f"{name}/pwcca_yx"] = pwcca_value(yv, xv, pwcca)
    for key, value in out.items():
        if np.ndim(value) <= 1 and not key.endswith("/mask"):
            print(key, np.round(value, 7))
    np.savez_compressed(args.out, **out)


if __name__ == "__main__":
    main()
