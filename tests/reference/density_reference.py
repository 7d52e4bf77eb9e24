"""Write tests/fixtures/density_reference.npz: DADApy's kNN and PAk log densities for
tests/test_density.py (the density estimators, issue 29).

Runs in the ``make bench-env`` environment (DADApy 0.3.4, scikit-learn, SciPy), never
imports geom_jax:

  .bench-venv/bin/python tests/reference/density_reference.py \
      tests/fixtures/density_reference.npz

Every value is float64, computed from the float32 points (cast to float64 first).
Every case has N = 500 points in D = 20 dimensions (the tests stack them into one
batch). Keys ``CASE/FIELD``; the cases:

* ``mixture``: four Gaussian clusters of 125 points (``mixture/labels`` [500], int32),
  each a 3-d Gaussian (unit scale) in its own random 3-d subspace plus isotropic noise
  0.05, centres drawn from N(0, 16 I);
* ``curved``: a 5-d standard Gaussian latent z, x = tanh(z A) + 0.5 sin(z B) + 3 with
  A, B [5, 20] Gaussian / sqrt(5), no noise (a curved 5-manifold in 20 dimensions);
* ``ties``: 450 distinct points of the grid {0, ..., 4}^4 mapped to 20 dimensions by a
  fixed integer matrix with entries in {-1, 0, 1}, then 50 rows that repeat earlier
  rows (exact duplicates: 100 points have a twin), shuffled: integer coordinates, so
  squared distances are small integers, exact in float64 and float32 alike, with large
  groups of equal distances.

DADApy gets its neighbours as ``Data(distances=(dist, idx), maxk=100)``: float64
distances by direct differences (``cdist``), column 0 the point itself, then the other
points by distance, ties to the lower index (a stable sort). Its default path
(``Data(coordinates=x)``, scikit-learn's neighbours) breaks ties in an unspecified
order, which changes k* on ``ties`` (the likelihood-ratio test reads the distances of
the j-th neighbour); on ``mixture`` and ``curved`` the default path is run too and must
agree to 1e-12. Duplicates: scikit-learn computes distances of these integer points
exactly, so a point and its twin are 0 apart there as here (for non-integer points its
Gram-matrix arithmetic can leave ~1e-8 instead).

Fields of each case (``x`` [500, 20] float32 is stored with each):

* ``id``: the intrinsic dimension passed to every estimator: DADApy's
  ``compute_id_2NN()`` (linear fit through the origin on the 90% smallest log(r2/r1))
  on the cloud for ``mixture`` and ``curved``; 4 (the lattice's dimension) on
  ``ties``, where DADApy's own 2NN fails (twins give r1 = 0: more infinite ratios than
  the 10% it discards) and, on the unique rows, gives ``ties/twonn`` (21.8: most
  lattice points have r1 = r2), with which ``ties/knn_k16_twonn`` is
  ``compute_density_kNN(16)`` (the path of geom-jax's ``intrinsic_dim=None``, whose
  TwoNN counts unique points);
* ``knn_k16``, ``knn_k16_err``, ``knn_k40``, ``knn_k40_err``:
  ``compute_density_kNN(k)`` for k = 16 and 40, log densities and their errors;
* ``pak``, ``pak_err``, ``pak_kstar`` (int64): ``compute_density_PAk()`` (alpha = 1e-6,
  so Dthr = chi2.isf(1e-6, 1) = 23.93; maxk = 100), NaN for the points with a twin
  (their first shell is 0 / 0: DADApy's volume is NaN and so is its Newton step);
* ``pak_margin``: per point, the smallest |dL - Dthr| / Dthr over the likelihood-ratio
  tests that decided its k* (j = 4 ... k* + 1, as DADApy's ``_compute_kstar`` runs
  them; recomputed here in float64 and checked to give DADApy's k*): where it is small,
  float32 distances may decide a test the other way;
* ``pak_optimum``: the exact maximiser of PAk's likelihood (float64 Newton steps to
  convergence from DADApy's start, NaN where a step meets a singular Hessian), minus
  log N; DADApy stops its damped Newton steps
  at a relative gradient of 1e-3, so ``pak`` differs from it slightly.

``masked_x`` [540, 20], ``masked_mask`` [540]: the ``curved`` points with 40 rows
inserted at random positions, mask False there (the tests fill them with garbage and
compare with ``curved``'s values). ``versions`` [3] (str): dadapy, sklearn, scipy.
"""

import argparse
import warnings
from importlib.metadata import version

import cloud_kinds  # a sibling module: the generators run as scripts
import dadapy
import numpy as np
import scipy
import sklearn
from scipy.spatial.distance import cdist
from scipy.special import gammaln
from scipy.stats import chi2

N, D = 500, 20
MAXK = 100
ALPHA = 1e-6
KS = (16, 40)


def ties(rng):
    grid = np.stack(np.meshgrid(*[np.arange(5)] * 4, indexing="ij"), -1).reshape(-1, 4)
    pts = grid[rng.choice(len(grid), N - 50, replace=False)]
    m = rng.integers(-1, 2, (4, D))
    assert np.linalg.matrix_rank(m) == 4
    x = (pts @ m).astype(np.float64)
    src = rng.choice(N - 50, 50, replace=False)
    x = np.concatenate([x, x[src]])
    return x[rng.permutation(N)]


def cases():
    x_mix, labels = cloud_kinds.mixture(np.random.default_rng(5), N, D)
    out = {"mixture": x_mix, "curved": cloud_kinds.curved(np.random.default_rng(5), N, D)}
    out["ties"] = ties(np.random.default_rng(5))
    return {k: v.astype(np.float32) for k, v in out.items()}, labels, np.random.default_rng(6)


def neighbours(x, maxk=MAXK):
    """float64 distances [N, maxk + 1] and indices: column 0 the point itself, then the
    others by distance, ties to the lower index."""
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :maxk]
    dist = np.take_along_axis(d, idx, axis=1)
    n = len(x)
    idx = np.concatenate([np.arange(n)[:, None], idx], axis=1)
    return np.concatenate([np.zeros((n, 1)), dist], axis=1), idx


def data(x, intrinsic_dim):
    out = dadapy.Data(distances=neighbours(x), maxk=MAXK, verbose=False)
    out.set_id(intrinsic_dim)
    return out


def kstar_tests(dist, idx, d, maxk=MAXK, alpha=ALPHA):
    """k* [N] and the smallest relative margin |dL - Dthr| / Dthr [N] of the tests that
    decided it, by the loop of DADApy's cython ``_compute_kstar`` in float64."""
    dthr = chi2.isf(alpha, 1)
    pref = np.exp(d / 2.0 * np.log(np.pi) - gammaln((d + 2.0) / 2.0))
    n = len(dist)
    kstar = np.empty(n, np.int64)
    margin = np.full(n, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(n):
            j = 4
            while j < maxk:
                ksel = j - 1
                vvi = pref * dist[i, ksel] ** d
                vvj = pref * dist[idx[i, j], ksel] ** d
                dl = -2.0 * ksel * (np.log(vvi) + np.log(vvj) - 2.0 * np.log(vvi + vvj) + np.log(4))
                if np.isfinite(dl):
                    margin[i] = min(margin[i], abs(dl - dthr) / dthr)
                if dl > dthr:
                    break
                j += 1
            kstar[i] = j - 1
    return kstar, margin


def pak_optimum(dist, kstar, d):
    """The maximiser of PAk's likelihood per point (Newton steps to convergence), its
    volumes as DADApy builds them (zero-width shells widened by 1e-14)."""
    n = len(dist)
    pref = np.exp(d / 2.0 * np.log(np.pi) - gammaln((d + 2.0) / 2.0))
    out = np.full(n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(n):
            k = kstar[i]
            r, r1 = dist[i, :k], dist[i, 1 : k + 1]
            ratio = r / r1
            res = np.finfo(float).resolution
            ratio[np.abs(ratio - 1.0) < res] -= 10 * res
            v = pref * np.exp(d * np.log(r1) + np.log(1 - ratio**d))
            if not np.all(np.isfinite(v)):
                continue
            f, a = np.log(k) - np.log(pref) - d * np.log(dist[i, k]), 0.0
            ll = np.arange(1, k + 1)
            for _ in range(200):
                g = v * np.exp(f + a * ll)
                grad = np.array([k - g.sum(), k * (k + 1) / 2 - (ll * g).sum()])
                hess = -np.array([[g.sum(), (ll * g).sum()], [(ll * g).sum(), (ll * ll * g).sum()]])
                if not np.isfinite(hess).all() or np.linalg.det(hess) <= 0:
                    f = np.nan
                    break
                step = np.linalg.solve(hess, grad)
                f, a = f - step[0], a - step[1]
                if np.abs(step).max() < 1e-13 * max(1.0, abs(f)):
                    break
            out[i] = f
    return out - np.log(n)


def densities(name, x, intrinsic_dim):
    out = {"id": intrinsic_dim}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in KS:
            den, err = data(x, intrinsic_dim).compute_density_kNN(k)
            out[f"knn_k{k}"], out[f"knn_k{k}_err"] = den, err
        dd = data(x, intrinsic_dim)
        den, err = dd.compute_density_PAk()
        out["pak"], out["pak_err"], out["pak_kstar"] = den, err, dd.kstar.astype(np.int64)
        kstar, margin = kstar_tests(dd.distances, dd.dist_indices, intrinsic_dim)
        assert np.array_equal(kstar, dd.kstar), f"{name}: k* recomputed differs"
        out["pak_margin"] = margin
        out["pak_optimum"] = pak_optimum(dd.distances, dd.kstar, intrinsic_dim)
        if name != "ties":
            default = dadapy.Data(x, verbose=False)
            assert abs(default.compute_id_2NN()[0] - intrinsic_dim) <= 1e-12 * intrinsic_dim
            for k in KS:
                den, _ = default.compute_density_kNN(k)
                assert np.allclose(den, out[f"knn_k{k}"], rtol=1e-12, atol=0)
            default = dadapy.Data(x, verbose=False)
            default.compute_id_2NN()
            den, _ = default.compute_density_PAk()
            assert np.array_equal(default.kstar, out["pak_kstar"])
            assert np.allclose(den, out["pak"], rtol=1e-12, atol=0)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    args = parser.parse_args()
    clouds, labels, rng = cases()
    out = {"mixture/labels": labels}
    for name, x32 in clouds.items():
        x = x32.astype(np.float64)
        out[f"{name}/x"] = x32
        unique = np.unique(x, axis=0)
        assert (len(unique) < N) == (name == "ties")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            twonn = dadapy.Data(unique if name == "ties" else x).compute_id_2NN()[0]
        intrinsic_dim = 4.0 if name == "ties" else float(twonn)
        values = densities(name, x, intrinsic_dim)
        out.update({f"{name}/{k}": v for k, v in values.items()})
        if name == "ties":
            out["ties/twonn"] = twonn
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                den, _ = data(x, float(twonn)).compute_density_kNN(16)
            out["ties/knn_k16_twonn"] = den
        twins = np.isnan(values["pak"])
        deviation = np.nanmax(np.abs(values["pak"] - values["pak_optimum"]))
        print(
            f"{name}: id {intrinsic_dim:.6f}, k* {values['pak_kstar'].min()}.."
            f"{values['pak_kstar'].max()}, PAk NaN at {twins.sum()} points, smallest test "
            f"margin {values['pak_margin'].min():.2e}, |PAk - optimum| <= {deviation:.2e}"
        )
    out["masked_x"], out["masked_mask"] = cloud_kinds.padded(rng, clouds["curved"])
    out["versions"] = np.array(
        [
            f"dadapy {version('dadapy')}",
            f"sklearn {sklearn.__version__}",
            f"scipy {scipy.__version__}",
        ]
    )
    np.savez_compressed(args.out, **out)


if __name__ == "__main__":
    main()
