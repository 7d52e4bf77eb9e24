"""The intrinsic-dimension battery (issue 29): global estimators of scikit-dimension
0.5.0 and DADApy 0.3.4, transcribed as plain JAX functions.

Every function is ``f(x, mask=None, *, options)`` on clouds x [..., N, D] (float,
batched over the leading axes) with an optional bool mask [..., N] of valid points,
and returns one float32 per cloud [...]. Invalid rows never enter a result (they are
zeroed, never neighbours, never averaged); shapes stay static under ``jax.jit``.
Options are checked, with a ValueError naming the option, before anything is
computed.

Conventions shared by the estimators (those of the libraries transcribed):

* Duplicates are kept. Exact duplicate points are neighbours at distance 0 (MOM,
  CorrInt, ESS, the binomial estimator); MADA alone skips zero distances.
* Neighbours are exact: the squared distances of a cloud are computed by direct
  differences, one coordinate at a time (:func:`sq_distance_matrix`, no Gram-matrix
  cancellation: identical points are exactly 0 apart, integer points exactly integer),
  and the k nearest are taken by ``lax.top_k``, ties to the lower index
  (:func:`nearest`). That dense [N, N] path is the one place to swap for a
  row-blocked one; MADA and CorrInt read the whole matrix (CorrInt counts every pair).
* Spectra are those of the covariance of the valid points, from the singular values
  of the centred points (``min(N_valid, D)`` of them, as scikit-learn's ``PCA``).
* Global estimates of scikit-dimension's local estimators (MADA, MOM, ESS) are the
  mean of the pointwise estimates over the valid points (its ``comb="mean"``).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import digamma

from geom_jax.errors import ArgumentError
from geom_jax.metrics import validation
from geom_jax.metrics.declare.observable import Field, Observable, Option
from geom_jax.metrics.measures import local_id

HIGHEST = lax.Precision.HIGHEST

LPCA_VERSIONS = ("FO", "ratio", "Kaiser", "maxgap", "participation_ratio", "broken_stick")
ESS_VERSIONS = ("a", "b")
ESS_MAX_DIM = 1154
"""Largest dimension of the ESS reference table (scikit-dimension grows its table
20, 38, 74, ..., 1154, ... on demand; float32 cannot resolve ESS values past a few
hundred dimensions anyway). An ESS value beyond the table gives NaN."""
FISHERS_ALPHAS = tuple(float(a) for a in np.arange(0.6, 1, 0.02))
"""scikit-dimension's default FisherS margins ``np.arange(0.6, 1, 0.02)``: 0.6 ... 0.98."""
LAMBERT_STEPS = 24
POINT_BLOCK = 64
"""Points per step of ESS's loop over neighbourhoods (bounds its [block, k, k] memory)."""


# -- option checks ------------------------------------------------------------------


def _points(x, mask, min_valid, k=None, k_name="k"):
    """x as float32 [..., N, D] and the valid mask [..., N], after the static check that
    k neighbours fit in N points and the value checks (valid counts, finite values)."""
    x = validation.as_points(x, "x")
    if k is not None:
        validation.check_neighbours_fit(x.shape[-2], k, k_name)
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask, min_valid=min_valid)
    valid = jnp.ones(x.shape[:-1], bool) if mask is None else mask
    return x, valid


@functools.partial(jax.jit, static_argnames=("fn", "options"))
def _per_cloud(fn, x, valid, options):
    """fn(x [N, D], valid [N], **options) -> scalar, over the leading axes of x."""
    kwargs = dict(options)
    batch, (n, d) = x.shape[:-2], x.shape[-2:]
    xf = x.reshape((-1, n, d))
    vf = valid.reshape((-1, n))
    xf = jnp.where(vf[..., None], xf, 0.0)
    out = jax.vmap(lambda a, m: fn(a, m, **kwargs))(xf, vf)
    return out.reshape(batch).astype(jnp.float32)


def _run(fn, x, valid, **options):
    return _per_cloud(fn, x, valid, tuple(sorted(options.items())))


# -- neighbours and spectra (one cloud) ---------------------------------------------


def sq_distance_matrix(x):
    """|x_i - x_j|^2 [..., N, N] of x [..., N, D] by direct differences, summed one
    coordinate at a time: exactly 0 between identical points, exactly symmetric, exact
    for small integers; memory [N, N] (no [N, N, D] intermediate)."""

    def step(acc, col):
        diff = col[..., :, None] - col[..., None, :]
        return acc + diff * diff, None

    acc = jnp.zeros(x.shape[:-1] + (x.shape[-2],), x.dtype)
    acc, _ = lax.scan(step, acc, jnp.moveaxis(x, -1, 0))
    return acc


def pair_distances(x, valid):
    """Distances [N, N] between valid points, +inf on the diagonal and where either
    point is invalid."""
    n = x.shape[-2]
    allowed = valid[:, None] & valid[None, :] & ~jnp.eye(n, dtype=bool)
    return jnp.where(allowed, jnp.sqrt(sq_distance_matrix(x)), jnp.inf)


def nearest(dist, k):
    """The k smallest entries of each row of dist [N, N] and their columns, ascending,
    ties to the lower index (``lax.top_k`` keeps the lower index first)."""
    neg, idx = lax.top_k(-dist, k)
    return -neg, idx


def knn(x, valid, k):
    """(dist [N, k], idx [N, k]): the k nearest valid neighbours of every point, the
    point itself excluded, duplicates included (distance 0), ties to the lower index."""
    return nearest(pair_distances(x, valid), k)


def _mean_over(values, valid):
    count = jnp.sum(valid)
    return jnp.sum(jnp.where(valid, values, 0.0)) / jnp.maximum(count, 1)


def _centred(x, valid):
    count = jnp.sum(valid)
    centre = jnp.sum(x, axis=0) / jnp.maximum(count, 1)
    return jnp.where(valid[:, None], x - centre, 0.0), count


def _spectrum(x, valid):
    """Covariance eigenvalues [r] (descending, r = min(N, D)), the number q = min(N_valid,
    D) of them that scikit-learn's PCA returns, and the valid count."""
    xc, count = _centred(x, valid)
    s = jnp.linalg.svd(xc, compute_uv=False)
    ev = s * s / jnp.maximum(count - 1, 1).astype(jnp.float32)
    q = jnp.minimum(count, x.shape[-1])
    return ev, q, count


def _components_for(ev, q, variance):
    """Fewest leading components whose variance reaches the fraction ``variance`` of the
    total: the smallest m >= 1 whose tail sum_{i >= m} ev_i <= (1 - variance) total
    (the same as cumsum_m / total >= variance, without cancelling near 1)."""
    r = ev.shape[-1]
    inside = jnp.arange(r) < q
    ev = jnp.where(inside, ev, 0.0)
    tail = jnp.cumsum(ev[::-1])[::-1]  # tail[m] = sum_{i >= m} ev_i
    total = tail[0]
    m = jnp.arange(r)
    above = (m >= 1) & (m < q) & (tail > (1.0 - variance) * total)
    return 1 + jnp.sum(above)


# -- PCA --------------------------------------------------------------------------------


def _pca_id(x, valid, variance):
    ev, q, _ = _spectrum(x, valid)
    return _components_for(ev, q, variance).astype(jnp.float32)


def pca_id(x, mask=None, *, variance=0.99):
    """Number of principal components needed for the fraction ``variance`` of the total
    variance of each cloud.

    The fewest leading covariance eigenvalues (of the centred valid points) whose sum
    reaches ``variance`` times the total, counted as the smallest m whose discarded
    tail is at most (1 - variance) of the total. ``variance=1`` counts every component
    float32 resolves as nonzero (rounding leaves the null directions of a rank-deficient
    cloud slightly positive).

    Args:
      x: [..., N, D] float points.
      mask: optional bool [..., N] of valid points.
      variance: fraction of the variance to explain, in (0, 1].

    Returns:
      float32 [...] (an integer count per cloud).

    Reference: scikit-dimension 0.5.0 ``lPCA(ver="ratio", alphaRatio=variance)``
    (Fukunaga 2010, "Introduction to statistical pattern recognition"; Cangelosi &
    Goriely 2007, Biology Direct 2:2).
    """
    validation.check_open_unit(variance, "variance", closed_top=True)
    x, valid = _points(x, mask, 2)
    return _run(_pca_id, x, valid, variance=float(variance))


def _pca_exponent(x, valid, rtol):
    ev, _, count = _spectrum(x, valid)
    r = ev.shape[-1]
    rank = jnp.arange(1, r + 1)
    use = (rank <= jnp.minimum(count - 1, x.shape[-1])) & (ev > rtol * ev[0])
    lx = jnp.log(rank.astype(jnp.float32))
    ly = jnp.log(jnp.where(use, ev, 1.0))
    m = jnp.sum(use).astype(jnp.float32)
    mx = jnp.sum(jnp.where(use, lx, 0.0)) / m
    my = jnp.sum(jnp.where(use, ly, 0.0)) / m
    dx = jnp.where(use, lx - mx, 0.0)
    dy = jnp.where(use, ly - my, 0.0)
    slope = jnp.sum(dx * dy) / jnp.sum(dx * dx)
    return jnp.where(m >= 2, -slope, jnp.nan)


def pca_spectrum_exponent(x, mask=None, *, rtol=1e-4):
    """Power-law exponent alpha of the covariance eigenspectrum, lambda_i ~ i^-alpha.

    Least squares of log lambda_i against log i over the ranks i = 1, 2, ... with
    i <= min(N_valid - 1, D) (the rank of the centred cloud) and lambda_i > rtol *
    lambda_1 (the non-negligible eigenvalues; the float32 singular values give an
    eigenvalue lambda_i to a relative ~2 eps sqrt(lambda_1 / lambda_i), ~2e-5 at the
    default cut, and the null directions of a rank-deficient cloud fall far below it);
    returns minus the slope. NaN when fewer than two ranks remain.

    Args:
      x: [..., N, D] float points.
      mask: optional bool [..., N] of valid points.
      rtol: smallest eigenvalue fitted, relative to the largest, in (0, 1).

    Returns:
      float32 [...].

    Reference: the eigenspectrum decay of Stringer et al. 2019 (Nature 571, 361;
    bioRxiv 374090); the fit is ``np.polyfit(log i, log lambda_i, 1)`` on the ranks
    above.
    """
    validation.check_open_unit(rtol, "rtol")
    x, valid = _points(x, mask, 3)
    return _run(_pca_exponent, x, valid, rtol=float(rtol))


def _lpca(x, valid, ver, alpha_fo, alpha_ratio):
    ev, q, _ = _spectrum(x, valid)
    r = ev.shape[-1]
    inside = jnp.arange(r) < q
    ev = jnp.where(inside, ev, 0.0)
    qf = q.astype(jnp.float32)
    if ver == "FO":
        out = jnp.sum(inside & (ev > alpha_fo * ev[0]))
    elif ver == "ratio":
        out = _components_for(ev, q, alpha_ratio)
    elif ver == "Kaiser":
        out = jnp.sum(inside & (ev > jnp.sum(ev) / qf))
    elif ver == "maxgap":
        pair = jnp.arange(r - 1) < q - 1
        gaps = ev[:-1] / ev[1:]
        out = jnp.argmax(jnp.where(pair & ~jnp.isnan(gaps), gaps, -jnp.inf)) + 1
    elif ver == "participation_ratio":
        out = jnp.sum(ev) ** 2 / jnp.sum(ev * ev)
    else:  # broken_stick: bs_i = (H_q - H_i) / q, H the harmonic numbers
        harmonic = jnp.concatenate([jnp.zeros(1), jnp.cumsum(1.0 / jnp.arange(1, r + 1))])
        bs = (harmonic[q] - harmonic[:r]) / qf
        below = inside & (bs > ev / jnp.sum(ev))
        out = jnp.where(jnp.any(below), jnp.argmax(below), 0)
    return out.astype(jnp.float32)


def lpca_id(x, mask=None, *, ver="FO", alpha_fo=0.05, alpha_ratio=0.05):
    """scikit-dimension's global PCA estimator ``lPCA`` with the spectrum rules that need
    no noise model.

    On the covariance eigenvalues ev_1 >= ... >= ev_q (q = min(N_valid, D)):

    * ``"FO"`` (Fukunaga-Olsen, the default): #{ev_i > alpha_fo ev_1};
    * ``"ratio"``: the fewest components reaching ``alpha_ratio`` of the variance
      (scikit-dimension's default alphaRatio = 0.05 is five per cent, hence usually 1;
      :func:`pca_id` has 0.99);
    * ``"Kaiser"``: #{ev_i > mean ev};
    * ``"maxgap"``: 1 + argmax_i ev_i / ev_{i+1};
    * ``"participation_ratio"``: (sum ev)^2 / sum ev^2;
    * ``"broken_stick"``: the first (0-based) index i where the broken-stick share
      (1/q) sum_{j >= i} 1/(j + 1) exceeds ev_i / sum ev, or 0 when there is none
      (scikit-dimension returns 0 then, not q).

    Args:
      x: [..., N, D] float points.
      mask: optional bool [..., N] of valid points.
      ver: one of LPCA_VERSIONS.
      alpha_fo: fraction of the largest eigenvalue for "FO", in (0, 1) (alphaFO).
      alpha_ratio: fraction of the variance for "ratio", in (0, 1] (alphaRatio).

    Returns:
      float32 [...].

    Reference: scikit-dimension 0.5.0 ``skdim.id.lPCA(ver, alphaFO, alphaRatio)``
    ``.fit(x).dimension_``; Fukunaga & Olsen 1971 (IEEE Trans. Comput. C-20, 176);
    Cangelosi & Goriely 2007 (Biology Direct 2:2).
    """
    validation.check_choice(ver, "ver", LPCA_VERSIONS)
    validation.check_open_unit(alpha_fo, "alpha_fo")
    validation.check_open_unit(alpha_ratio, "alpha_ratio", closed_top=True)
    x, valid = _points(x, mask, 2)
    return _run(_lpca, x, valid, ver=ver, alpha_fo=float(alpha_fo), alpha_ratio=float(alpha_ratio))


# -- MADA, MOM, CorrInt --------------------------------------------------------------


def _mada(x, valid, k):
    dist = pair_distances(x, valid)
    pair = valid[:, None] & valid[None, :]
    top = jnp.max(jnp.where(pair, jnp.where(jnp.isinf(dist), 0.0, dist), 0.0))
    # scikit-dimension replaces every zero distance (the point itself, its duplicates)
    # by the largest distance of the cloud.
    zero = pair & ((dist == 0) | jnp.eye(dist.shape[-1], dtype=bool))
    dist = jnp.where(zero, top, dist)
    near, _ = nearest(dist, k)
    rk = near[:, k - 1]
    rk2 = near[:, k // 2 - 1]
    return _mean_over(math.log(2.0) / jnp.log(rk / rk2), valid)


def mada_id(x, mask=None, *, k=20):
    """Manifold-adaptive dimension estimation (MADA), the mean of its pointwise estimates.

    Pointwise log 2 / log(r_k / r_{floor(k/2)}), r_j the distance to the j-th nearest
    point at a nonzero distance (scikit-dimension replaces zero distances, the point
    itself and its duplicates, by the largest distance of the cloud); the global value
    is the mean over the valid points.

    Args:
      x: [..., N, D] float points.
      mask: optional bool [..., N] of valid points.
      k: neighbourhood size (scikit-dimension's n_neighbors), >= 2, <= N_valid - 1.

    Returns:
      float32 [...].

    Reference: Farahmand, Szepesvari & Audibert 2007 (ICML, "Manifold-adaptive
    dimension estimation"); scikit-dimension 0.5.0 ``skdim.id.MADA().fit(x).dimension_``
    (after the R package ider).
    """
    validation.check_int(k, "k", 2)
    x, valid = _points(x, mask, k + 1, k)
    return _run(_mada, x, valid, k=int(k))


def _mom(x, valid, k):
    dist, _ = knn(x, valid, k)
    m1 = jnp.mean(dist, axis=-1)
    return _mean_over(-m1 / (m1 - dist[:, -1]), valid)


def mom_id(x, mask=None, *, k=100):
    """Method-of-moments estimator (MOM), the mean of its pointwise estimates.

    Pointwise -m1 / (m1 - r_k), m1 the mean distance to the k nearest neighbours
    (duplicates included) and r_k the k-th; the global value is the mean over the
    valid points.

    Args:
      x: [..., N, D] float points.
      mask: optional bool [..., N] of valid points.
      k: neighbours (scikit-dimension's default n_neighbors, 100), >= 2, <= N_valid - 1.

    Returns:
      float32 [...].

    Reference: Amsaleg, Chelly, Furon, Girard, Houle, Kawarabayashi & Nett 2018 (Data
    Min. Knowl. Disc. 32, 1768, "Extreme-value-theoretic estimation of local intrinsic
    dimensionality"); scikit-dimension 0.5.0 ``skdim.id.MOM().fit(x).dimension_``.
    """
    validation.check_int(k, "k", 2)
    x, valid = _points(x, mask, k + 1, k)
    return _run(_mom, x, valid, k=int(k))


def masked_median(values, valid):
    """np.median of values[valid] (mean of the two middle values for an even count)."""
    count = jnp.sum(valid)
    s = jnp.sort(jnp.where(valid, values, jnp.inf))
    lo = s[jnp.maximum(count - 1, 0) // 2]
    hi = s[count // 2]
    return 0.5 * (lo + hi)


def _corrint(x, valid, k1, k2):
    dist = pair_distances(x, valid)
    near, _ = nearest(dist, k2)
    r1 = masked_median(near[:, k1 - 1], valid)
    r2 = masked_median(near[:, k2 - 1], valid)
    s1 = jnp.sum(dist < r1).astype(jnp.float32)
    s2 = jnp.sum(dist < r2).astype(jnp.float32)
    return jnp.log(s2 / s1) / jnp.log(r2 / r1)


def corrint_id(x, mask=None, *, k1=10, k2=20):
    """Correlation dimension (Grassberger-Procaccia) between two neighbourhood scales.

    r1, r2: the medians over the valid points of the distance to their k1-th and k2-th
    nearest neighbours (duplicates included); C(r) = #{ordered pairs i != j with
    d_ij < r} / N^2; the estimate is log(C(r2) / C(r1)) / log(r2 / r1).

    Args:
      x: [..., N, D] float points.
      mask: optional bool [..., N] of valid points.
      k1: first neighbourhood size, >= 1.
      k2: second neighbourhood size, > k1, <= N_valid - 1.

    Returns:
      float32 [...].

    Reference: Grassberger & Procaccia 1983 (Physica D 9, 189); scikit-dimension
    0.5.0 ``skdim.id.CorrInt().fit(x).dimension_`` (after the R package ider).
    """
    validation.check_int(k1, "k1", 1)
    validation.check_int(k2, "k2", 2)
    if k2 <= k1:
        raise ArgumentError(
            "{k2} must be larger than {k1}, got k2={v2!r}, k1={v1!r}", ("k1", "k2"), v1=k1, v2=k2
        )
    x, valid = _points(x, mask, k2 + 1, k2, "k2")
    return _run(_corrint, x, valid, k1=int(k1), k2=int(k2))


# -- ESS -----------------------------------------------------------------------------


@functools.cache
def ess_reference(ver, maxdim=ESS_MAX_DIM):
    """ESS of a uniform ball in n = 1..maxdim dimensions [maxdim] (float64, d = 1), by
    scikit-dimension's recurrences (``ESS._essReference``), so that each entry is its
    own to the last bit."""
    g = math.gamma
    if ver == "a":
        j1 = np.arange(1, maxdim + 1, 2)
        j2 = np.arange(2, maxdim + 1, 2)
        f1 = np.full(maxdim, np.nan)
        f1[j1 - 1] = g(1 / 2) / g(2 / 2) * np.concatenate(([1], np.cumprod(j1 / (j1 + 1))[:-1]))
        f1[j2 - 1] = g(2 / 2) / g(3 / 2) * np.concatenate(([1], np.cumprod(j2 / (j2 + 1))[:-1]))
        k1 = np.arange(2, maxdim + 1, 2)
        k2 = np.arange(3, maxdim + 1, 2)
        f2 = np.zeros(maxdim)
        f2[k1 - 1] = g(2 / 2) / g(1 / 2) * np.concatenate(([1], np.cumprod(k1 / (k1 - 1))[:-1]))
        f2[k2 - 1] = g(3 / 2) / g(2 / 2) * np.concatenate(([1], np.cumprod(k2 / (k2 - 1))[:-1]))
        return f1 * f2
    j1 = np.arange(1, maxdim + 1, 2)
    j2 = np.arange(2, maxdim + 1, 2)
    ref = np.full(maxdim, np.nan)
    ref[j1 - 1] = g(3 / 2) / g(2 / 2) * np.concatenate(([1], np.cumprod((j1 + 2) / (j1 + 1))[:-1]))
    ref[j2 - 1] = g(4 / 2) / g(3 / 2) * np.concatenate(([1], np.cumprod((j2 + 2) / (j2 + 1))[:-1]))
    return ref * 2 / np.sqrt(np.pi) / np.arange(1, maxdim + 1)


def _ess_values(nb, ver):
    """ESS value [B] of neighbourhoods nb [B, k, D]: over all pairs of the centred
    vectors, sum |a||b| sin(a, b) (ver "a", the area of the parallelogram) or
    |a||b| |cos(a, b)| (ver "b") over sum |a||b|. sin and cos come from the unit vectors
    u, v as |u - v| |u + v| / 2 and (|u + v|^2 - |u - v|^2) / 4, both by direct
    differences (no cancellation in |a|^2 |b|^2 - (a.b)^2; 0 for duplicates)."""
    v = nb - jnp.mean(nb, axis=-2, keepdims=True)
    norm = jnp.sqrt(jnp.sum(v * v, axis=-1))
    u = v / jnp.where(norm > 0, norm, 1.0)[..., None]

    def step(acc, col):  # col [B, k]
        minus, plus = acc
        dm = col[..., :, None] - col[..., None, :]
        dp = col[..., :, None] + col[..., None, :]
        return (minus + dm * dm, plus + dp * dp), None

    k = nb.shape[-2]
    zero = jnp.zeros(nb.shape[:-2] + (k, k), nb.dtype)
    (minus, plus), _ = lax.scan(step, (zero, zero), jnp.moveaxis(u, -1, 0))
    weight = norm[..., :, None] * norm[..., None, :]
    if ver == "a":
        value = weight * 0.5 * jnp.sqrt(minus * plus)
    else:
        value = weight * 0.25 * jnp.abs(plus - minus)
    upper = jnp.triu(jnp.ones((k, k), bool), 1)
    return jnp.sum(jnp.where(upper, value, 0.0), axis=(-2, -1)) / jnp.sum(
        jnp.where(upper, weight, 0.0), axis=(-2, -1)
    )


def _ess_dimension(ess, ver):
    """scikit-dimension's interpolation of an ESS value in its reference table: n + (ess
    - ref(n)) / (ref(n + 1) - ref(n)) with n the largest dimension whose reference is <=
    ess (ver "a", increasing) or > ess (ver "b", decreasing)."""
    ref64 = ess_reference(ver)
    ref = jnp.asarray(ref64, jnp.float32)
    inv_step = jnp.asarray(1.0 / np.diff(ref64), jnp.float32)
    if ver == "a":
        n = jnp.sum(ref <= ess[..., None], axis=-1)
    else:
        n = jnp.sum(ref > ess[..., None], axis=-1)
    i = jnp.clip(n - 1, 0, ESS_MAX_DIM - 2)
    de = n + (ess - ref[i]) * inv_step[i]
    return jnp.where((n >= 1) & (n < ESS_MAX_DIM) & ~jnp.isnan(ess), de, jnp.nan)


def _ess(x, valid, k, ver):
    _, idx = knn(x, valid, k)
    n = x.shape[-2]
    pad = -n % POINT_BLOCK
    idx = jnp.concatenate([idx, jnp.zeros((pad, k), idx.dtype)])

    def block(ids):  # [B, k]
        return _ess_dimension(_ess_values(x[ids], ver), ver)

    blocks = idx.reshape(-1, POINT_BLOCK, k)
    pw = lax.map(block, blocks).reshape(-1)[:n]
    return _mean_over(pw, valid)


def ess_id(x, mask=None, *, k=100, ver="a", d=1):
    """Expected simplex skewness (ESS), the mean of its pointwise estimates.

    For every point, its k nearest neighbours (the point excluded, ties to the lower
    index) centred on their mean; over all C(k, 2) pairs (a, b) of those vectors,
    ESS = sum vol / sum |a||b| with vol = |a||b| sin(a, b) (ver "a") or |a||b| |cos(a,
    b)| (ver "b"); the pointwise dimension interpolates ESS in the values of a uniform
    ball (:func:`ess_reference`); the global value is their mean over the valid points.

    scikit-dimension draws 5000 of the C(k, d + 1) simplices at random when there are
    more; with the default k = 100 and d = 1 there are 4950, all used, and its result
    is deterministic. This function always uses every pair (the expectation the random
    draw estimates), so for k > 100 it matches scikit-dimension only on average.

    Args:
      x: [..., N, D] float points.
      mask: optional bool [..., N] of valid points.
      k: neighbours per point (scikit-dimension's default n_neighbors, 100), >= 2,
        <= N_valid - 1.
      ver: "a" or "b" (Johnsson et al.'s two skewness statistics).
      d: simplex dimension; only scikit-dimension's default d = 1 is implemented.

    Returns:
      float32 [...]; NaN where an ESS value falls outside the reference table
      (dimension > 1154).

    Reference: Johnsson, Soneson & Fontes 2015 (IEEE TPAMI 37, 196, "Low bias local
    intrinsic dimension estimation from expected simplex skewness"); scikit-dimension
    0.5.0 ``skdim.id.ESS(ver, d).fit(x).dimension_`` (after the R package
    intrinsicDimension).
    """
    validation.check_int(k, "k", 2)
    validation.check_choice(ver, "ver", ESS_VERSIONS)
    if d != 1 or isinstance(d, bool):
        raise ArgumentError(
            "{d} must be 1 (only d = 1 is implemented), got {value!r}", "d", value=d
        )
    x, valid = _points(x, mask, k + 1, k)
    return _run(_ess, x, valid, k=int(k), ver=ver)


# -- FisherS -------------------------------------------------------------------------


def lambert_w(log_z, steps=LAMBERT_STEPS):
    """Principal branch W(z) for z > 0 given log z: Newton's method on w + log w = log z
    from log(1 + z) (monotone convergence, no overflow for large z)."""
    w = jnp.logaddexp(0.0, log_z)

    def body(_, w):
        return w * (1.0 + log_z - jnp.log(w)) / (1.0 + w)

    return lax.fori_loop(0, steps, body, w)


@functools.cache
def fishers_tables(alphas):
    """float64 constants for the margins alphas: log c_a with c_a = -log(1 - a^2) /
    (2 pi a^2 (1 - a^2)), 1 / -log(1 - a^2), and select [A, A] bool: row m marks the
    alphas scikit-dimension takes when alphas[m] is the largest with inseparable points
    (those nearest 0.9 alphas[m], by its own float64 comparison)."""
    a = np.asarray(alphas, np.float64)
    w = np.log(1 - a**2)
    log_c = np.log(-w / (2 * np.pi * a**2 * (1 - a**2)))
    select = np.zeros((len(a), len(a)), bool)
    for m in range(len(a)):
        inds = np.arange(m + 1)
        alpha_ref = max(a[inds]) * 0.9
        k = np.where(abs(a[inds] - alpha_ref) == min(abs(a - alpha_ref)))[0]
        select[m, inds[k]] = True
    return log_c, 1.0 / -w, select


def _fishers(x, valid, conditional_number, alphas):
    log_c, inv_w, select = fishers_tables(alphas)
    xc, count = _centred(x, valid)
    u, s, _ = jnp.linalg.svd(xc, full_matrices=False)
    r = s.shape[-1]
    ev = s * s
    keep = (jnp.arange(r) < jnp.minimum(count, x.shape[-1])) & (
        ev / ev[0] > 1.0 / conditional_number
    )
    # PCA scores whitened (U sqrt(N - 1)), then projected on the unit sphere
    xp = jnp.where(keep, u, 0.0)
    xp = xp / jnp.sqrt(jnp.sum(xp * xp, axis=-1, keepdims=True))
    xy = jnp.matmul(xp, xp.T, precision=HIGHEST)
    xy = xy / jnp.diagonal(xy)[:, None]
    n = x.shape[-2]
    pair = valid[:, None] & valid[None, :] & ~jnp.eye(n, dtype=bool)
    a32 = jnp.asarray(alphas, jnp.float32)
    counts = jnp.sum(pair[None] & (xy[None] >= a32[:, None, None]), axis=(-2, -1))
    m = count.astype(jnp.float32)
    p = counts.astype(jnp.float32) / ((m - 1.0) * m)  # mean over points of counts / (N - 1)
    log_z = jnp.asarray(log_c, jnp.float32) - 2.0 * jnp.log(jnp.where(p > 0, p, 1.0))
    dims = lambert_w(log_z) * jnp.asarray(inv_w, jnp.float32)
    separable = p > 0
    top = jnp.max(jnp.where(separable, jnp.arange(len(alphas)), -1))
    chosen = jnp.asarray(select)[jnp.maximum(top, 0)] & separable
    best = jnp.max(jnp.where(chosen, dims, -jnp.inf))
    return jnp.where((top >= 0) & jnp.any(chosen), best, jnp.nan)


def fishers_id(x, mask=None, *, conditional_number=10.0, alphas=None):
    """Fisher separability dimension (FisherS) of each cloud.

    The valid points are centred, reduced to the principal components whose variance
    exceeds 1 / conditional_number of the largest, whitened and projected on the unit
    sphere. For each margin alpha, p(alpha) is the mean over points of the fraction of
    the other N - 1 points y with <x, y> / <x, x> >= alpha; the dimension of alpha is
    W(-w / (2 pi p^2 alpha^2 (1 - alpha^2))) / -w with w = log(1 - alpha^2) and W the
    principal Lambert function. The estimate is that dimension at the alpha nearest to
    0.9 times the largest alpha with p > 0 (the largest dimension on a tie, as
    scikit-dimension takes); NaN when every point is separable at every alpha.

    Args:
      x: [..., N, D] float points.
      mask: optional bool [..., N] of valid points.
      conditional_number: > 0, the eigenvalue ratio of the components kept.
      alphas: increasing margins in (0, 1); None: 0.6, 0.62, ..., 0.98
        (scikit-dimension's ``np.arange(0.6, 1, 0.02)``).

    Returns:
      float32 [...].

    Reference: Albergante, Bac & Zinovyev 2019 (IJCNN, "Estimating the effective
    dimension of large biological datasets using Fisher separability analysis",
    arXiv:1901.06328); scikit-dimension 0.5.0 ``skdim.id.FisherS().fit(x).dimension_``.
    """
    if not validation.is_number(conditional_number) or not conditional_number > 0:
        raise ArgumentError(
            "{conditional_number} must be a number > 0, got {value!r}",
            "conditional_number",
            value=conditional_number,
        )
    if alphas is None:
        alphas = FISHERS_ALPHAS
    else:
        values = np.asarray(alphas, np.float64).reshape(-1)
        if values.size == 0 or not (
            np.all((values > 0) & (values < 1)) and np.all(np.diff(values) > 0)
        ):
            raise ArgumentError(
                "{alphas} must be increasing values in (0, 1), got {value!r}",
                "alphas",
                value=alphas,
            )
        alphas = tuple(float(a) for a in values)
    x, valid = _points(x, mask, 3)
    return _run(_fishers, x, valid, conditional_number=float(conditional_number), alphas=alphas)


# -- the binomial estimator ----------------------------------------------------------


def _binomial(x, valid, k, r):
    dist, _ = knn(x, valid, k)
    rn = r * dist[:, k - 1 :]
    inner = jnp.sum(dist <= rn, axis=-1)  # n - 1: the point itself is not counted here
    total = jnp.sum(jnp.where(valid, inner, 0))
    m = jnp.sum(valid)
    a = 1.0 + total.astype(jnp.float32)
    b = 1.0 + ((k - 1) * m - total).astype(jnp.float32)
    value = (digamma(a) - digamma(a + b)) / math.log(r)
    # DADApy returns 0 when no point has a neighbour in the inner shell
    return jnp.where(total > 0, value, 0.0)


def binomial_id(x, mask=None, *, k=20, r=0.5):
    """Binomial intrinsic dimension at a fixed number of neighbours (Bayesian estimate).

    For every valid point, rk = the distance to its k-th nearest neighbour and n - 1 =
    the number of neighbours within r * rk (inclusive; duplicates included). With a flat
    Beta(1, 1) prior on r^d, the posterior of p = r^d is Beta(a, b), a = 1 + sum (n - 1),
    b = 1 + (k - 1) N - sum (n - 1), and the estimate is the posterior mean of d,
    (psi(a) - psi(a + b)) / log r (psi the digamma function). 0 when no point has a
    neighbour in the inner shell (as DADApy returns).

    DADApy needs ``k < maxk`` (its stored neighbours, by default min(100, N - 1));
    this function needs only k <= N_valid - 1 and equals DADApy with maxk > k. DADApy
    has no defaults for k and r; k = 20 and r = 0.5 are this library's.

    Args:
      x: [..., N, D] float points.
      mask: optional bool [..., N] of valid points.
      k: neighbours, >= 1, <= N_valid - 1.
      r: ratio of the inner to the outer radius, in (0, 1).

    Returns:
      float32 [...].

    Reference: Macocco, Glielmo, Grilli & Laio 2023 (Phys. Rev. Lett. 130, 067401,
    arXiv:2207.09688) and Acevedo, Rodriguez & Laio (arXiv:2411.02126); DADApy 0.3.4
    ``Data(x).compute_id_binomial_k(k, r, bayes=True)[0]``.
    """
    validation.check_int(k, "k", 1)
    validation.check_open_unit(r, "r")
    x, valid = _points(x, mask, k + 1, k)
    return _run(_binomial, x, valid, k=int(k), r=float(r))


# -- the registered observable: the PCA estimators, per layer in the run's step --------

PCA_VARIANCE = Option(
    "pca_variance",
    float,
    0.99,
    "Variance fraction whose leading principal components pca_id counts, in (0, 1].",
    check=lambda v: validation.check_open_unit(v, "pca_variance", closed_top=True),
)


def _pca_fields(ctx):
    """pca_id and pca_exponent [C] of the chunk's clouds ctx.x [C, N, D] (all valid points,
    duplicates included, as scikit-learn's PCA sees them)."""
    variance = float(ctx.options["pca_variance"])
    valid = ctx.valid
    x = jnp.where(valid[..., None], ctx.x, 0.0)
    # one cloud at a time: a batched SVD runs on XLA:CPU's shared thread pool, which
    # several simulated devices' collectives can hold (a deadlock seen with 8 devices)
    out = lax.map(
        lambda a: (_pca_id(a[0], a[1], variance), _pca_exponent(a[0], a[1], 1e-4)), (x, valid)
    )
    return {"pca_id": out[0], "pca_exponent": out[1]}


PCA = Observable(
    name="pca_id",
    compute=_pca_fields,
    fields=(
        Field("pca_id", (), "principal components holding pca_variance of the variance."),
        Field(
            "pca_exponent",
            (),
            "power-law exponent of the covariance eigenspectrum (ranks above 1e-4 of the top).",
        ),
    ),
    consumes=("points",),
    doc=__doc__,
    reference="scikit-dimension 0.5 lPCA(ver='ratio'); Lee et al. ACL 2025 (PCA at 99%)",
    reduce="covariance spectrum over valid tokens",
    options=(PCA_VARIANCE,),
    report=(local_id.ESTIMATORS,),
)
