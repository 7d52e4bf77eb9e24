"""The intrinsic-dimension battery (issue 29): global estimators of scikit-dimension
0.5.0 and DADApy 0.3.4, as plain JAX functions and as the registered observable
``id_battery``.

Every function is ``f(x, mask=None, *, options)`` on clouds x [..., N, D] (float,
batched over the leading axes) with an optional bool mask [..., N] of valid points,
and returns one float32 per cloud [...]. Invalid rows never enter a result (they are
zeroed, never neighbours, never averaged); shapes stay static under ``jax.jit``.
Options are checked, with a ValueError naming the option, before anything is
computed.

One copy of each estimator's mathematics serves both the function and the observable:

* The neighbour-based estimators (binomial, MADA, MOM, ESS) are functions of a layer
  context ``ctx`` reading its sorted neighbour lists [C, N, K] among all valid points
  (duplicates included, at distance 0; exact squared distances by direct differences;
  ``ctx.knn_idx``, ``ctx.knn_sq_at``). The observable's are the engine's certified
  lists, the same on the dense and the row-blocked path; the functions' come from
  :class:`DenseLists`, all pairs by direct differences, whose ties go to the lower
  index however large a group of equal distances (the certified lists re-rank k + 4
  Gram candidates, so among more points at exactly the k-th distance the ones kept
  follow the Gram rounding: ESS, which reads indices, can then differ at ~1e-5).
  MADA alone skips zero distances, so it reads the K = ``knn_k`` list positions past a
  point's copies (see :func:`mada_from_distances`).
* The all-pairs estimators count pairs in a pass over blocks of rows
  (``ctx.map_rows``: O(block x N) memory, blocks split over a mesh on the sharded
  path): CorrInt the pairs closer than its two radii, exactly
  (:mod:`geom_jax.metrics.neighbours.pair_counts`); FisherS the inseparable pairs of its
  whitened points on the unit sphere, per margin.
* Spectra (PCA, lPCA, FisherS's whitening) are those of the covariance of the valid
  points, from the singular values of the centred points (``min(N_valid, D)`` of them,
  as scikit-learn's ``PCA``), one cloud at a time.
* Global estimates of scikit-dimension's local estimators (MADA, MOM, ESS) are the
  mean of the pointwise estimates over the valid points (its ``comb="mean"``).

The observable ``id_battery`` (fields binomial_id, mada_id, mom_id, corrint_id, ess_id,
fishers_id, lpca_id, phd_id [L]; asked for by name, not in "all") takes the functions'
defaults, scikit-dimension's, as options named ``battery_<estimator>_<option>``; the
lists hold the largest neighbourhood (``knn_k``), and MOM's and ESS's k = 100 become N -
1 on clouds of fewer points (the value used is recorded). Its MADA is NaN on a cloud
where a point has more than knn_k - battery_mada_k exact copies (its nonzero distances
then lie past the lists). The persistent-homology dimension is computed by
:mod:`geom_jax.metrics.measures.phd`, whose options it also declares (battery_phd_*).
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
from geom_jax.metrics.backends.protocol import ContextBase
from geom_jax.metrics.declare.observable import (
    PER_PROMPT,
    POOLED,
    Field,
    Observable,
    Option,
    ReportSection,
)
from geom_jax.metrics.measures import local_id, phd
from geom_jax.metrics.measures.sections import id_battery as sections
from geom_jax.metrics.neighbours import blocked_rows, pair_counts

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
BATTERY_SQ = "id_battery_sq"
"""Key of the exact squared distances along the lists in a context's cache."""


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
    xf, vf, batch = validation.flat_clouds(x, valid)
    out = jax.vmap(lambda a, m: fn(a, m, **kwargs))(xf, vf)
    return out.reshape(batch).astype(jnp.float32)


def _run(fn, x, valid, **options):
    return _per_cloud(fn, x, valid, tuple(sorted(options.items())))


# -- dense neighbours and spectra (one cloud) ---------------------------------------


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
    return _masked_distances(sq_distance_matrix(x), valid)


def _masked_distances(sq, valid):
    n = sq.shape[-1]
    allowed = valid[:, None] & valid[None, :] & ~jnp.eye(n, dtype=bool)
    return jnp.where(allowed, jnp.sqrt(sq), jnp.inf)


def nearest(dist, k):
    """The k smallest entries of each row of dist [N, N] and their columns, ascending,
    ties to the lower index (``lax.top_k`` keeps the lower index first)."""
    neg, idx = lax.top_k(-dist, k)
    return -neg, idx


def knn(x, valid, k):
    """(dist [N, k], idx [N, k]): the k nearest valid neighbours of every point, the
    point itself excluded, duplicates included (distance 0), ties to the lower index."""
    return nearest(pair_distances(x, valid), k)


class _Lists:
    """Sorted neighbour lists idx [C, N, K] and their squared distances sq [C, N, K],
    read as a layer context's certified lists are (``idx``, ``sq_at``)."""

    def __init__(self, idx, sq):
        self.idx, self._sq = idx, sq

    def sq_at(self, positions):
        return self._sq[..., np.asarray(positions, np.int64)]


class DenseLists(ContextBase):
    """The layer-context questions the battery's estimators ask, answered for the public
    functions from each cloud's dense distances: :func:`knn`'s lists (every pair by
    direct differences, ties to the lower index even in large groups of equal
    distances), their squared distances exact as :func:`sq_distance_matrix` gives them,
    and ``map_rows`` on this device."""

    @functools.cached_property
    def _knn(self):
        def lists(x, valid):
            sq = sq_distance_matrix(x)
            dist, idx = nearest(_masked_distances(sq, valid), self.knn_k)  # = knn's
            found = jnp.isfinite(dist)
            sq = jnp.take_along_axis(sq, idx, axis=-1)
            return jnp.where(found, idx, -1), jnp.where(found, sq, jnp.inf)

        return _Lists(*jax.vmap(lists)(self.x, self.valid))


@functools.partial(jax.jit, static_argnames=("fn", "options", "knn_k"))
def _dense_lists(fn, x, valid, options, knn_k):
    xf, vf, batch = validation.flat_clouds(x, valid)
    layer = jnp.zeros(xf.shape[:1], jnp.int32)
    ctx = DenseLists(xf, vf, dict(options), knn_k=knn_k, ranks=(), inputs={}, layer=layer)
    return fn(ctx).reshape(batch).astype(jnp.float32)


def _on_lists(fn, x, valid, options, knn_k=0):
    """fn(ctx) -> [C] on a :class:`DenseLists` of clouds x [..., N, D] with lists of
    length knn_k: float32 [...] (what the public functions run, so that they and the
    observable share every line of each estimator)."""
    return _dense_lists(fn, x, valid, tuple(sorted(options.items())), int(knn_k))


def _mean_over(values, valid):
    """Mean of values [..., N] over the valid points [..., N] -> [...]."""
    count = jnp.sum(valid, axis=-1)
    return jnp.sum(jnp.where(valid, values, 0.0), axis=-1) / jnp.maximum(count, 1)


def _centred(x, valid):
    count = jnp.sum(valid)
    centre = jnp.sum(x, axis=0) / jnp.maximum(count, 1)
    return jnp.where(valid[:, None], x - centre, 0.0), count


def _eigenvalues(s, count):
    """Covariance eigenvalues [r] from the singular values s [r] of the centred points
    (r = min(N, D)), and the number q = min(N_valid, D) of them scikit-learn's PCA
    returns."""
    ev = s * s / jnp.maximum(count - 1, 1).astype(jnp.float32)
    return ev, jnp.minimum(count, s.shape[-1])


def _spectrum(x, valid):
    """Covariance eigenvalues [r] (descending, r = min(N, D)), the number q = min(N_valid,
    D) of them that scikit-learn's PCA returns, and the valid count."""
    xc, count = _centred(x, valid)
    ev, q = _eigenvalues(jnp.linalg.svd(xc, compute_uv=False), count)
    return ev, q, count


def _svd(x, valid):
    """(U [N, r], singular values [r], valid count) of the centred valid points."""
    xc, count = _centred(x, valid)
    u, s, _ = jnp.linalg.svd(xc, full_matrices=False)
    return u, s, count


def _svd_of(ctx):
    """_svd of every cloud of a context [C, ...], one cloud at a time (a batched SVD runs
    on XLA:CPU's shared thread pool, which several simulated devices' collectives can
    hold: a deadlock seen with 8 devices), computed once per context."""
    return ctx.cached("id_battery_svd", lambda c: lax.map(lambda a: _svd(*a), (c.x, c.valid)))


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


def _lpca_of_spectrum(ev, q, ver, alpha_fo, alpha_ratio):
    """lPCA's rule ``ver`` on the covariance eigenvalues ev [r] (q of them kept)."""
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


def _lpca(x, valid, ver, alpha_fo, alpha_ratio):
    ev, q, _ = _spectrum(x, valid)
    return _lpca_of_spectrum(ev, q, ver, alpha_fo, alpha_ratio)


def _lpca_of(ctx):
    """lPCA [C] of a context's clouds, on the shared SVD."""
    o = ctx.options
    _, s, count = _svd_of(ctx)

    def one(s, count):
        ev, q = _eigenvalues(s, count)
        return _lpca_of_spectrum(
            ev, q, o["battery_lpca_ver"], o["battery_lpca_alpha_fo"], o["battery_lpca_alpha_ratio"]
        )

    return jax.vmap(one)(s, count)


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


# -- from neighbour lists: MADA, MOM, the binomial estimator, ESS ---------------------


def list_distances(ctx):
    """Exact distances [C, N, knn_k] along a context's sorted neighbour lists (+inf beyond
    the valid neighbours), computed once per context."""
    return ctx.cached(BATTERY_SQ, lambda c: jnp.sqrt(c.knn_sq_at(range(c.knn_k))))


def mada_from_distances(dist, valid, k):
    """MADA [...] from sorted neighbour distances dist [..., N, K] (duplicates included,
    +inf beyond the valid neighbours) and valid [..., N].

    scikit-dimension replaces every zero distance (the point itself, its copies) by the
    largest distance of the cloud before taking the k nearest, so r_j is a point's j-th
    nonzero list distance, or that largest distance once its nonzero distances run out.
    The largest distance is known only when the lists hold every valid neighbour (K >=
    N_valid - 1); a point whose j-th nonzero distance lies past a shorter list (more
    than K - k copies of it) makes its cloud NaN."""
    size = dist.shape[-1]
    count = jnp.sum(valid, axis=-1)
    top = jnp.max(jnp.where(valid[..., None] & jnp.isfinite(dist), dist, 0.0), axis=(-2, -1))
    fill = jnp.where(size >= count - 1, top, jnp.nan)[..., None]
    zeros = jnp.sum(dist == 0, axis=-1)

    def nonzero(j):
        pos = zeros + (j - 1)
        d = jnp.take_along_axis(dist, jnp.minimum(pos, size - 1)[..., None], axis=-1)[..., 0]
        d = jnp.where(pos < size, d, jnp.inf)
        return jnp.where(jnp.isfinite(d), d, fill)

    return _mean_over(math.log(2.0) / jnp.log(nonzero(k) / nonzero(k // 2)), valid)


def _mada(ctx):
    return mada_from_distances(list_distances(ctx), ctx.valid, ctx.options["battery_mada_k"])


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
    # every neighbour: the lists are complete, so MADA's fill is the cloud's largest distance
    return _on_lists(_mada, x, valid, {"battery_mada_k": int(k)}, knn_k=x.shape[-2] - 1)


def mom_from_distances(dist, valid):
    """MOM [...] from the k nearest distances dist [..., N, k] and valid [..., N]."""
    m1 = jnp.mean(dist, axis=-1)
    return _mean_over(-m1 / (m1 - dist[..., -1]), valid)


def _mom(ctx):
    k = ctx.options["battery_mom_k"]
    return mom_from_distances(list_distances(ctx)[..., :k], ctx.valid)


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
    return _on_lists(_mom, x, valid, {"battery_mom_k": int(k)}, knn_k=int(k))


def masked_median(values, valid):
    """np.median of values[valid] (mean of the two middle values for an even count)."""
    count = jnp.sum(valid)
    s = jnp.sort(jnp.where(valid, values, jnp.inf))
    lo = s[jnp.maximum(count - 1, 0) // 2]
    hi = s[count // 2]
    return 0.5 * (lo + hi)


def _corrint(ctx):
    """CorrInt [C]: the radii from the lists, the pair counts from a pass over row blocks."""
    k1, k2 = ctx.options["battery_corrint_k1"], ctx.options["battery_corrint_k2"]
    near = list_distances(ctx)[..., np.array([k1 - 1, k2 - 1])]
    radii = jax.vmap(jax.vmap(masked_median, in_axes=(-1, None)))(near, ctx.valid)  # [C, 2]
    xc, _, sq = jax.vmap(blocked_rows.centred_points)(ctx.x, ctx.valid)
    counts = ctx.map_rows(pair_counts.count_closer, ctx.x, xc, sq, ctx.valid, radii)
    s = jnp.sum(jnp.where(ctx.valid[..., None], counts, 0), axis=-2).astype(jnp.float32)
    return jnp.log(s[:, 1] / s[:, 0]) / jnp.log(radii[:, 1] / radii[:, 0])


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
    options = {"battery_corrint_k1": int(k1), "battery_corrint_k2": int(k2)}
    return _on_lists(_corrint, x, valid, options, knn_k=int(k2))


# -- ESS (from neighbour lists) -----------------------------------------------------


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
    |a||b| |cos(a, b)| (ver "b") over sum |a||b|. With u, v the unit vectors and s the
    sign of u.v, the smaller of |u - v|^2, |u + v|^2 is |u - s v|^2, by direct
    differences (no cancellation for (anti)parallel pairs; 0 for duplicates), the larger
    2 (|u|^2 + |v|^2) minus it; sin = sqrt(smaller larger) / 2, |cos| = (larger -
    smaller) / 4."""
    k = nb.shape[-2]
    i, j = np.triu_indices(k, 1)
    v = nb - jnp.mean(nb, axis=-2, keepdims=True)
    norm = jnp.sqrt(jnp.sum(v * v, axis=-1))
    u = v / jnp.where(norm > 0, norm, 1.0)[..., None]
    cos = jnp.einsum("...id,...jd->...ij", u, u, precision=HIGHEST)[..., i, j]
    sign = jnp.where(cos >= 0, 1.0, -1.0)

    def step(acc, col):  # col [B, k]
        d = col[..., i] - sign * col[..., j]
        return acc + d * d, None

    smaller, _ = lax.scan(step, jnp.zeros(cos.shape, nb.dtype), jnp.moveaxis(u, -1, 0))
    sq = jnp.sum(u * u, axis=-1)
    larger = 2.0 * (sq[..., i] + sq[..., j]) - smaller
    weight = norm[..., i] * norm[..., j]
    if ver == "a":
        value = weight * 0.5 * jnp.sqrt(smaller * larger)
    else:
        value = weight * 0.25 * (larger - smaller)
    return jnp.sum(value, axis=-1) / jnp.sum(weight, axis=-1)


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


def ess_pointwise(x, idx, ver):
    """Pointwise ESS dimension [N] of one cloud x [N, D] from its neighbour lists idx
    [N, k] (-1 rows allowed: their values are garbage), POINT_BLOCK points at a time."""
    n, k = idx.shape
    pad = -n % POINT_BLOCK
    idx = jnp.concatenate([jnp.maximum(idx, 0), jnp.zeros((pad, k), idx.dtype)])

    def block(ids):  # [B, k]
        return _ess_dimension(_ess_values(x[ids], ver), ver)

    return lax.map(block, idx.reshape(-1, POINT_BLOCK, k)).reshape(-1)[:n]


def _ess(ctx):
    k, ver = ctx.options["battery_ess_k"], ctx.options["battery_ess_ver"]
    idx = ctx.knn_idx[..., :k]
    pw = lax.map(lambda a: ess_pointwise(a[0], a[1], ver), (ctx.x, idx))
    return _mean_over(pw, ctx.valid)


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
    return _on_lists(
        _ess, x, valid, {"battery_ess_k": int(k), "battery_ess_ver": ver}, knn_k=int(k)
    )


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


def fishers_points(u, s, count, conditional_number):
    """FisherS's points of one cloud [N, r] from the SVD of its centred valid points
    (u [N, r], s [r], count): the PCA scores of the components whose variance exceeds
    1 / conditional_number of the largest, whitened (U sqrt(N - 1)), projected on the
    unit sphere (zero rows at invalid points)."""
    r = s.shape[-1]
    ev = s * s
    keep = (jnp.arange(r) < jnp.minimum(count, r)) & (ev / ev[0] > 1.0 / conditional_number)
    xp = jnp.where(keep, u, 0.0)
    norm = jnp.sqrt(jnp.sum(xp * xp, axis=-1, keepdims=True))
    return xp / jnp.where(norm > 0, norm, 1.0)


def inseparable_rows(start, block, xp, valid, alphas):
    """int32 [block, A]: for the rows i = start..start + block of one cloud's FisherS
    points xp [N, r], #{j valid, j != i : <x_i, x_j> / <x_i, x_i> >= alpha} per margin."""
    n = xp.shape[0]
    own = start + jnp.arange(block, dtype=jnp.int32)
    rows = lax.dynamic_slice_in_dim(xp, start, block)
    xy = jnp.einsum("bd,nd->bn", rows, xp, precision=HIGHEST)
    xy = xy / jnp.take_along_axis(xy, own[:, None], axis=-1)
    valid_rows = lax.dynamic_slice_in_dim(valid, start, block)
    pair = valid_rows[:, None] & valid[None, :] & (own[:, None] != jnp.arange(n)[None, :])
    a32 = np.asarray(alphas, np.float32)
    return jnp.stack([jnp.sum(pair & (xy >= a), axis=-1, dtype=jnp.int32) for a in a32], -1)


def fishers_from_counts(counts, count, alphas):
    """FisherS of one cloud from its inseparable ordered pairs per margin counts [A] and
    its valid count."""
    log_c, inv_w, select = fishers_tables(alphas)
    m = count.astype(jnp.float32)
    p = counts.astype(jnp.float32) / ((m - 1.0) * m)  # mean over points of counts / (N - 1)
    log_z = jnp.asarray(log_c, jnp.float32) - 2.0 * jnp.log(jnp.where(p > 0, p, 1.0))
    dims = lambert_w(log_z) * jnp.asarray(inv_w, jnp.float32)
    separable = p > 0
    top = jnp.max(jnp.where(separable, jnp.arange(len(alphas)), -1))
    chosen = jnp.asarray(select)[jnp.maximum(top, 0)] & separable
    best = jnp.max(jnp.where(chosen, dims, -jnp.inf))
    return jnp.where((top >= 0) & jnp.any(chosen), best, jnp.nan)


def _fishers(ctx):
    """FisherS [C]: the points from the shared SVD, the counts from a pass over row blocks."""
    cn = ctx.options["battery_fishers_conditional_number"]
    alphas = ctx.options.get("battery_fishers_alphas", FISHERS_ALPHAS)
    u, s, count = _svd_of(ctx)
    xp = jax.vmap(fishers_points, in_axes=(0, 0, 0, None))(u, s, count, cn)
    rows = functools.partial(inseparable_rows, alphas=alphas)
    counts = ctx.map_rows(rows, xp, ctx.valid)
    total = jnp.sum(jnp.where(ctx.valid[..., None], counts, 0), axis=-2)
    return jax.vmap(fishers_from_counts, in_axes=(0, 0, None))(total, count, alphas)


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
    options = {
        "battery_fishers_conditional_number": float(conditional_number),
        "battery_fishers_alphas": alphas,
    }
    return _on_lists(_fishers, x, valid, options)


# -- the binomial estimator ----------------------------------------------------------


def binomial_from_distances(dist, valid, r):
    """The binomial ID [...] from the k nearest distances dist [..., N, k], valid [..., N]."""
    k = dist.shape[-1]
    inner = jnp.sum(dist <= r * dist[..., k - 1 :], axis=-1)  # n - 1: the point is not counted
    total = jnp.sum(jnp.where(valid, inner, 0), axis=-1)
    m = jnp.sum(valid, axis=-1)
    a = 1.0 + total.astype(jnp.float32)
    b = 1.0 + ((k - 1) * m - total).astype(jnp.float32)
    value = (digamma(a) - digamma(a + b)) / math.log(r)
    # DADApy returns 0 when no point has a neighbour in the inner shell
    return jnp.where(total > 0, value, 0.0)


def _binomial(ctx):
    k, r = ctx.options["battery_binomial_k"], ctx.options["battery_binomial_r"]
    return binomial_from_distances(list_distances(ctx)[..., :k], ctx.valid, r)


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
    options = {"battery_binomial_k": int(k), "battery_binomial_r": float(r)}
    return _on_lists(_binomial, x, valid, options, knn_k=int(k))


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


# -- the registered observable id_battery: every estimator per layer, in the run's step --


def _cap_at_neighbours(v, n, kind):
    """scikit-dimension's k = 100 on clouds of fewer points: every other point (N - 1)."""
    return min(v, n - 1)


def _cap_at_points(v, n, kind):
    """The largest subsample size (max_points excluded) is at most the cloud's N."""
    return min(v, n)


def _int(name, default, lo, doc, resolve=None):
    return Option(
        name, int, default, doc, check=lambda v: validation.check_int(v, name, lo), resolve=resolve
    )


def _unit(name, default, doc, closed_top=False):
    return Option(
        name,
        float,
        default,
        doc,
        check=lambda v: validation.check_open_unit(v, name, closed_top=closed_top),
    )


def _positive(name, default, doc):
    def check(v):
        if not v > 0:
            raise ArgumentError("{" + name + "} must be a number > 0, got {v!r}", name, v=v)

    return Option(name, float, default, doc, check=check)


def _choice(name, default, choices, doc):
    return Option(
        name, str, default, doc, check=lambda v: validation.check_choice(v, name, choices)
    )


K_OPTIONS = (
    _int("battery_binomial_k", 20, 1, "Neighbours k of the binomial ID (binomial_id)."),
    _int("battery_mada_k", 20, 2, "Neighbourhood size k of MADA (scikit-dimension's default)."),
    _int(
        "battery_mom_k",
        100,
        2,
        "Neighbours k of MOM (scikit-dimension's default 100; capped at N - 1 for clouds of "
        "fewer points, the value used is recorded).",
        _cap_at_neighbours,
    ),
    _int("battery_corrint_k1", 10, 1, "CorrInt's first neighbourhood size k1 (its radius r1)."),
    _int("battery_corrint_k2", 20, 2, "CorrInt's second neighbourhood size k2 > k1 (radius r2)."),
    _int(
        "battery_ess_k",
        100,
        2,
        "Neighbours k of ESS (scikit-dimension's default 100; capped at N - 1 for clouds of "
        "fewer points, the value used is recorded).",
        _cap_at_neighbours,
    ),
)
"""The neighbourhood sizes: the shared lists hold the largest (knn_k)."""

PHD_OPTIONS = (
    _int("battery_phd_min_points", phd.MIN_POINTS, 2, "Smallest PHD subsample size."),
    _int(
        "battery_phd_max_points",
        phd.MAX_POINTS,
        1,
        "PHD subsample sizes are range(min_points, max_points, step), max_points excluded "
        "(the authors' 512; capped at the cloud's N, the value used is recorded).",
        _cap_at_points,
    ),
    _int("battery_phd_step", phd.STEP, 1, "Step between PHD subsample sizes (the authors' 40)."),
    _positive("battery_phd_alpha", phd.ALPHA, "Edge-length power alpha of PHD's spanning trees."),
    _int("battery_phd_restarts", phd.RESTARTS, 1, "PHD subsets per size (median taken)."),
    _int("battery_phd_reruns", phd.RERUNS, 1, "PHD repetitions whose slopes are averaged."),
    _int("battery_phd_seed", 0, 0, "Seed of PHD's subsets (the same subsets for every layer)."),
)

OPTIONS = (
    K_OPTIONS
    + (
        _unit("battery_binomial_r", 0.5, "Inner-to-outer radius ratio r of the binomial ID."),
        _choice("battery_ess_ver", "a", ESS_VERSIONS, "ESS statistic (scikit-dimension's ver)."),
        _positive(
            "battery_fishers_conditional_number",
            10.0,
            "FisherS keeps the components above 1 / conditional_number of the largest variance.",
        ),
        _choice("battery_lpca_ver", "FO", LPCA_VERSIONS, "lPCA's rule (scikit-dimension's ver)."),
        _unit(
            "battery_lpca_alpha_fo", 0.05, "lPCA 'FO': eigenvalues above this times the largest."
        ),
        _unit(
            "battery_lpca_alpha_ratio", 0.05, "lPCA 'ratio': variance fraction.", closed_top=True
        ),
    )
    + PHD_OPTIONS
)


def _phd_sizes(o, n=None):
    """PHD's subsample sizes from the options (checked; with n, the largest fits n)."""
    names = ("min_points", "max_points", "step", "alpha", "restarts", "reruns", "seed")
    sizes = phd.check_options(*(o["battery_phd_" + k] for k in names), prefix="battery_phd_")
    if n is not None and sizes[-1] > n:
        raise ArgumentError(
            "{battery_phd_max_points} gives PHD subsets of up to {size} points, but clouds "
            "have N = {n}",
            "battery_phd_max_points",
            size=sizes[-1],
            n=n,
        )
    return sizes


def _check(options, n):
    for opt in K_OPTIONS:
        opt.check(options[opt.name])  # again: a cap at N - 1 may leave too few
        validation.check_neighbours_fit(n, options[opt.name], opt.name)
    k1, k2 = options["battery_corrint_k1"], options["battery_corrint_k2"]
    if k2 <= k1:
        raise ArgumentError(
            "{battery_corrint_k2} must be larger than {battery_corrint_k1}, got {v2!r} and {v1!r}",
            ("battery_corrint_k1", "battery_corrint_k2"),
            v1=k1,
            v2=k2,
        )
    _phd_sizes(options, n)


def _knn_k(options):
    return max(options[opt.name] for opt in K_OPTIONS)


def _min_points(options):
    """Valid points each prompt needs: the largest k + 1, and the largest PHD subset."""
    name = max(K_OPTIONS, key=lambda opt: options[opt.name]).name
    need, arg = options[name] + 1, f"{name}={options[name]}"
    largest = _phd_sizes(options)[-1]
    if largest > need:
        need, arg = largest, f"battery_phd_max_points={options['battery_phd_max_points']}"
    return (need, 0, arg)


def _battery(ctx):
    """Every field [C] of the battery on the chunk's clouds."""
    o = ctx.options
    return {
        "binomial_id": _binomial(ctx),
        "mada_id": _mada(ctx),
        "mom_id": _mom(ctx),
        "corrint_id": _corrint(ctx),
        "ess_id": _ess(ctx),
        "fishers_id": _fishers(ctx),
        "lpca_id": _lpca_of(ctx),
        "phd_id": phd.phd_of_clouds(
            ctx.x,
            ctx.valid,
            n_sizes=_phd_sizes(o),
            alpha=float(o["battery_phd_alpha"]),
            restarts=int(o["battery_phd_restarts"]),
            reruns=int(o["battery_phd_reruns"]),
            seed=int(o["battery_phd_seed"]),
        ),
    }


ID_BATTERY = Observable(
    name="id_battery",
    compute=_battery,
    fields=(
        Field(
            "binomial_id",
            (),
            "binomial ID, Bayesian posterior mean (DADApy compute_id_binomial_k).",
        ),
        Field("mada_id", (), "MADA, mean of the pointwise estimates (scikit-dimension MADA)."),
        Field("mom_id", (), "MOM, mean of the pointwise estimates (scikit-dimension MOM)."),
        Field("corrint_id", (), "correlation dimension between the k1 and k2 radii (CorrInt)."),
        Field("ess_id", (), "expected simplex skewness ID, mean of the pointwise estimates (ESS)."),
        Field("fishers_id", (), "Fisher separability dimension (scikit-dimension FisherS)."),
        Field("lpca_id", (), "global PCA estimate by battery_lpca_ver (scikit-dimension lPCA)."),
        Field(
            "phd_id", (), "persistent-homology dimension from subsample MSTs (Tulchinskii 2023)."
        ),
    ),
    consumes=("points", "knn"),
    doc=__doc__,
    reference=(
        "scikit-dimension 0.5 (MADA, MOM, CorrInt, ESS, FisherS, lPCA); DADApy 0.3.4 "
        "compute_id_binomial_k; Tulchinskii et al. 2023, arXiv 2306.04723 (PHD)"
    ),
    reduce="mean of pointwise estimates (MADA, MOM, ESS) or a whole-cloud fit, all valid tokens",
    options=OPTIONS,
    knn_k=_knn_k,
    check=_check,
    min_points=_min_points,
    in_all=False,
    report=(
        ReportSection(
            "Intrinsic dimension battery",
            figure=sections.plot,
            text=sections.text,
            needs=("binomial_id",),
            file="id_battery.png",
            kinds=(PER_PROMPT, POOLED),
        ),
    ),
)
