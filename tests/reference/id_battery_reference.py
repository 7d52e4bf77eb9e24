"""Write tests/fixtures/id_battery_reference.npz: scikit-dimension and DADApy values for
tests/test_id_battery.py (the intrinsic-dimension battery, issue 29).

Runs in the ``make bench-env`` environment (scikit-dimension 0.5.0, DADApy 0.3.4,
scikit-learn, SciPy), never imports geom_jax:

  .bench-venv/bin/python tests/reference/id_battery_reference.py \
      tests/fixtures/id_battery_reference.npz

Every value is float64, computed from the float32 points (cast to float64 first).
Every case has N = 600 points in D = 30 dimensions (the tests stack them into one
batch). Keys ``CASE/FIELD``; the cases:

* ``mixture``: four Gaussian clusters of 150 points (``mixture/labels`` [600], int32),
  each a 3-d Gaussian (unit scale) in its own random 3-d subspace plus isotropic noise
  0.05, centres drawn from N(0, 16 I);
* ``curved``: a 5-d standard Gaussian latent z, x = tanh(z A) + 0.5 sin(z B) + 3 with
  A, B [5, 30] Gaussian / sqrt(5), no noise (a curved 5-manifold in 30 dimensions, far
  from the origin);
* ``ties``: 540 distinct points of the grid {0, ..., 4}^4 mapped to 30 dimensions by a
  fixed integer matrix with entries in {-1, 0, 1}, then 60 rows that repeat earlier
  rows (exact duplicates): integer coordinates, so that squared distances are small
  integers, exact in float64 and float32 alike, with large groups of equal distances.

Fields (``x`` [600, 30] float32 is stored with each case):

* ``pca_ratio``: ``lPCA(ver="ratio", alphaRatio=0.99)``: the fewest components whose
  cumulative explained variance reaches 0.99 of the total (the generator refuses a case
  whose cumulative fraction lies within 1e-4 of 0.99);
* ``pca_exponent``: minus the least-squares slope of log(eigenvalue) against log(rank)
  (``np.polyfit``) over the ranks i <= min(N - 1, D) whose covariance eigenvalue exceeds
  1e-4 times the largest (none within 1% of that cut);
* ``lpca``: ``lPCA()`` (ver="FO", alphaFO=0.05): eigenvalues above 0.05 times the
  largest (none within 1e-4 of the cut); ``lpca_Kaiser``, ``lpca_maxgap``,
  ``lpca_participation_ratio``, ``lpca_broken_stick``: ``lPCA(ver=...)``;
* ``mada``: ``MADA().fit(x).dimension_`` (k = 20: mean over points of
  log 2 / log(r_20 / r_10), zero distances replaced by the largest);
* ``mom``: ``MOM().fit(x).dimension_`` (k = 100: mean over points of -m1 / (m1 - r_k));
* ``corrint``: ``CorrInt().fit(x).dimension_`` (k1 = 10, k2 = 20; no pair distance
  within 1e-6 of either radius, except, on ``ties``, distances exactly equal to a
  radius that is itself a distance: exact in float32 too);
* ``ess``: ``ESS(random_state=0).fit(x, precomputed_knn_arrays=knn).dimension_``,
  k = 100 neighbours from a float64 distance matrix, ties broken by lower index
  (scikit-dimension's own kNN breaks ties in an unspecified order, which changes ESS on
  ``ties``; on the other cases ``ess_default``, its default path, is stored too and
  must agree to 1e-12). With k = 100 and d = 1 every one of the C(100, 2) = 4950
  pairs is used (scikit-dimension samples 5000 when there are more), so the value does
  not depend on the seed; ``ess_b``: the same with ``ver="b"``;
* ``fishers``: ``FisherS().fit(x).dimension_`` (conditional_number 10, no eigenvalue
  ratio within 1e-4 of 1/10, alphas
  0.6, 0.62, ..., 0.98); ``fishers_alpha_index``: the index of the alpha it selected;
  ``fishers_near``: the number of (point, point) inseparability values within 1e-6 of
  the selected alpha (0: the float32 counts agree);
* ``binomial``: DADApy ``Data(x).compute_id_binomial_k(k=20, r=0.5)[0]`` (Bayesian
  posterior mean, maxk = 100); ``binomial_k5_r07``: ``k=5, r=0.7`` (no neighbour
  distance within 1e-6 of r rk, exact integer ties aside).

``masked_x`` [640, 30], ``masked_mask`` [640]: the ``curved`` points with 40 rows
inserted at random positions, mask False there (the tests fill them with garbage and
compare with ``curved``'s values). ``versions`` [3] (str): skdim, dadapy, sklearn.
"""

import argparse
import math
import warnings
from importlib.metadata import version

import cloud_kinds  # a sibling module: the generators run as scripts
import dadapy
import numpy as np
import skdim
import sklearn
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA

N, D = 600, 30
LPCA_VERSIONS = ("Kaiser", "maxgap", "participation_ratio", "broken_stick")


def ties(rng):
    grid = np.stack(np.meshgrid(*[np.arange(5)] * 4, indexing="ij"), -1).reshape(-1, 4)
    pts = grid[rng.choice(len(grid), N - 60, replace=False)]
    m = rng.integers(-1, 2, (4, D))
    assert np.linalg.matrix_rank(m) == 4
    x = (pts @ m).astype(np.float64)
    src = rng.integers(0, N - 60, 60)
    x = np.concatenate([x, x[src]])
    return x[rng.permutation(N)]


def cases():
    """Each case from its own generator, seed 3: the seed whose FisherS inseparability
    values keep >= 1e-5 from the alpha selected (of seeds 1 to 11)."""
    x_mix, labels = cloud_kinds.mixture(np.random.default_rng(3), N, D)
    out = {"mixture": x_mix, "curved": cloud_kinds.curved(np.random.default_rng(3), N, D)}
    out["ties"] = ties(np.random.default_rng(3))
    return {k: v.astype(np.float32) for k, v in out.items()}, labels, np.random.default_rng(4)


def spectrum(x):
    return PCA().fit(x).explained_variance_


def pca_ratio(x, variance=0.99):
    ev = spectrum(x)
    frac = np.cumsum(ev) / ev.sum()
    assert np.abs(frac - variance).min() > 1e-4, "cumulative variance too close to the cut"
    want = skdim.id.lPCA(ver="ratio", alphaRatio=variance).fit(x).dimension_
    assert want == int(np.sum(frac < variance)) + 1
    return want


def pca_exponent(x, rtol=1e-4):
    ev = spectrum(x)
    ev = ev[: min(len(x) - 1, x.shape[1])]
    ratio = ev / ev[0]
    assert np.abs(np.log(ratio[ratio > 0] / rtol)).min() > np.log(1.01), "eigenvalue at the cut"
    keep = ratio > rtol
    ranks = np.arange(1, len(ev) + 1)[keep]
    slope, _ = np.polyfit(np.log(ranks), np.log(ev[keep]), 1)
    return -slope


def lpca(x):
    """lPCA() (FO) and the other versions without a noise model, by name."""
    ev = spectrum(x)
    assert np.abs(ev / ev[0] - 0.05).min() > 1e-4
    assert np.abs(ev / ev.mean() - 1).min() > 1e-4
    out = {"lpca": skdim.id.lPCA().fit(x).dimension_}
    for ver in LPCA_VERSIONS:
        out[f"lpca_{ver}"] = skdim.id.lPCA(ver=ver).fit(x).dimension_
    return out


def knn_lower_index(x, k):
    """float64 distances [N, k] and indices, self excluded, ties broken by lower index."""
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


def corrint(x, exact, k1=10, k2=20):
    d = cdist(x, x)
    dk, _ = knn_lower_index(x, k2)
    for r in (np.median(dk[:, k1 - 1]), np.median(dk[:, k2 - 1])):
        off = d[~np.eye(len(x), dtype=bool)]
        near = np.abs(off - r) <= 1e-6 * r
        if exact:
            # integer data: a radius that is itself a distance (sqrt of an integer) is
            # exact in float32 too, and so are the pairs at exactly that distance
            assert np.sqrt(round(r**2)) == r or not near.any()
            near &= off != r
        assert not near.any(), f"{near.sum()} distances within 1e-6 of r = {r}"
    return skdim.id.CorrInt().fit(x).dimension_


def ess(x, name, ver="a"):
    dist, idx = knn_lower_index(x, 100)
    est = skdim.id.ESS(ver=ver, random_state=0)
    value = est.fit(x, precomputed_knn_arrays=(dist, idx)).dimension_
    if name == "ties" or ver != "a":
        return value, None
    default = skdim.id.ESS(ver=ver, random_state=0).fit(x).dimension_
    print(f"{name} ESS: tie-broken {value!r}, default path {default!r}")
    assert abs(value - default) <= 1e-12 * abs(value), (value, default)
    return value, default


def fishers(x):
    """FisherS, the index of the alpha selected, and the number of inseparability values
    within 1e-6 of it (must be 0: the float32 counts then agree)."""
    est = skdim.id.FisherS().fit(x)
    ev = spectrum(x)
    assert np.abs(ev / ev[0] - 0.1).min() > 1e-4, "a component at the conditional number"
    value = est.dimension_
    alphas = est._alphas[0]
    index = int(np.flatnonzero(est.n_alpha_ == value)[0])
    xp = est.Xp_
    xy = xp @ xp.T
    xy = xy / np.diag(xy)[:, None]
    np.fill_diagonal(xy, 0.0)
    gap = np.abs(xy - alphas[index]).min()
    near = int(np.sum(np.abs(xy - alphas[index]) <= 1e-6))
    # the largest alpha with an inseparable pair decides which alpha is selected
    top = int(np.flatnonzero(xy.max() >= alphas)[-1])
    clear = int(np.sum(xy >= alphas[top] + 1e-5))
    assert clear >= 10 and (top == len(alphas) - 1 or xy.max() < alphas[top + 1] - 1e-5)
    print(
        f"FisherS {value:.6f}: alpha {alphas[index]:.2f} (index {index}), nearest value "
        f"{gap:.1e} from it; {clear} values clear above alpha {alphas[top]:.2f}"
    )
    return value, index, near


def binomial(x, k, r, exact):
    dk, _ = knn_lower_index(x, k)
    rk = dk[:, -1:]
    gap = np.abs(dk - r * rk)
    if exact:
        # integer data: exact ties d^2 = r^2 rk^2 are exact in float32 too (r = 1/2)
        tied = np.isclose(dk**2, (r * rk) ** 2, rtol=0, atol=1e-9)
        gap = np.where(tied, np.inf, gap)
    assert (gap > 1e-6 * rk).all(), "a neighbour distance within 1e-6 of r rk"
    data = dadapy.Data(np.asarray(x, np.float64), verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return data.compute_id_binomial_k(k, r)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    clouds, labels, rng = cases()
    out = {"mixture/labels": labels}
    for name, x32 in clouds.items():
        x = x32.astype(np.float64)
        out[f"{name}/x"] = x32
        out[f"{name}/pca_ratio"] = pca_ratio(x)
        out[f"{name}/pca_exponent"] = pca_exponent(x)
        out.update({f"{name}/{k}": v for k, v in lpca(x).items()})
        out[f"{name}/mada"] = skdim.id.MADA().fit(x).dimension_
        out[f"{name}/mom"] = skdim.id.MOM().fit(x).dimension_
        out[f"{name}/corrint"] = corrint(x, name == "ties")
        fs, index, near = fishers(x)
        assert near == 0, f"{near} FisherS inseparability values within 1e-6 of an alpha"
        out[f"{name}/fishers"], out[f"{name}/fishers_alpha_index"] = fs, index
        out[f"{name}/fishers_near"] = near
        out[f"{name}/binomial"] = binomial(x, 20, 0.5, name == "ties")
        out[f"{name}/binomial_k5_r07"] = binomial(x, 5, 0.7, name == "ties")
        out[f"{name}/ess"], default = ess(x, name)
        if name != "ties":
            out[f"{name}/ess_default"] = default
        out[f"{name}/ess_b"], _ = ess(x, name, "b")
    out["masked_x"], out["masked_mask"] = cloud_kinds.padded(rng, clouds["curved"])
    out["versions"] = np.array(
        [
            f"skdim {skdim.__version__}",
            f"dadapy {version('dadapy')}",
            f"sklearn {sklearn.__version__}",
        ]
    )
    for key, value in out.items():
        if np.ndim(value) == 0:
            print(key, value)
    np.savez_compressed(args.out, **out)
    assert math.isfinite(out["curved/fishers"])


if __name__ == "__main__":
    main()
