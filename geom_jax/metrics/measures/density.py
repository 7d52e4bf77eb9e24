"""Point density estimators (issue 29): DADApy 0.3.4's k-NN and PAk log densities,
transcribed as plain JAX functions.

Every function is ``f(x, mask=None, *, options)`` on clouds x [..., N, D] (float,
batched over the leading axes) with an optional bool mask [..., N] of valid points,
and returns float32 values per point [..., N]; invalid points get NaN (-1 for the
integer k*). Invalid rows never enter a result (they are zeroed and are never
neighbours) and ``log N`` counts the valid points; shapes stay static under
``jax.jit``. Options are checked, with a ValueError naming the option, before anything
is computed.

Conventions (DADApy's):

* Log densities are natural logs of a density normalised to the number of points:
  ``log rho_i = log(k / (N V_d r_k^d))`` for k-NN, V_d = pi^(d/2) / Gamma(d/2 + 1) the
  volume of the unit d-ball and r_k the distance to the k-th nearest neighbour, the
  point itself not counted (DADApy's column 0 is the point, its k-th column the k-th
  other point).
* The intrinsic dimension d is the cloud's TwoNN estimate when not given
  (:func:`geom_jax.metrics.twonn`, DADApy's ``compute_id_2NN`` defaults: linear fit
  through the origin on the 90% smallest ratios r2 / r1; geom-jax's counts unique
  points, DADApy's every point, so the two agree on clouds without duplicates; on a
  cloud with duplicates DADApy's own 2NN fails or is dominated by the infinite ratios of
  the twins).
* Duplicates are kept: exact duplicates are neighbours at distance 0, ties go to the
  lower index (what DADApy computes when its neighbour distances are exact, as
  scikit-learn's are for integer points; for other points scikit-learn's Gram-matrix
  arithmetic leaves ~1e-8 between twins instead of 0). A point with k or more twins has
  r_k = 0 and log density +inf; PAk gives NaN at every point with a twin, as DADApy
  does (its first shell is 0 / 0).
* Neighbours are exact: :func:`geom_jax.metrics.measures.id_battery.knn`, squared
  distances by direct differences (0 between identical points) and ``lax.top_k`` (ties
  to the lower index), a dense [N, N] path: the one place to swap for a row-blocked
  one.
"""

import functools
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import gammaln

from geom_jax.errors import ArgumentError
from geom_jax.metrics import validation
from geom_jax.metrics.measures.id_battery import knn
from geom_jax.metrics.measures.intrinsic_dimension import twonn

PAK_ALPHA = 1e-6
"""DADApy's default significance of the likelihood-ratio test that picks k*:
Dthr = chi2.isf(1e-6, 1) = 23.928."""
PAK_MAX_K = 100
"""DADApy's default ``maxk`` (its neighbour lists hold min(100, N - 1) neighbours):
k* <= min(max_k, N_valid - 1) - 1."""
PAK_MAX_ITER = 10000
"""DADApy's cap on the Newton steps of the PAk likelihood maximisation."""
PAK_FIRST_K = 3
"""The smallest k*: DADApy's test starts at j = 4 and k* = j - 1."""
PAK_GRADIENT_TOL = 1e-3
"""DADApy stops its Newton steps once max(|dL/dF| / |F|, |dL/da| / |a|) <= 1e-3."""
TIE_WIDTH = 1e-14
"""DADApy's width of a shell between two neighbours at identical distances: the ratio
r_j / r_{j+1} = 1 becomes 1 - 10 * resolution(float64) = 1 - 1e-14."""
LOG_TINY_VOLUME = math.log(1e-300)
"""DADApy skips the maximisation (keeps the k-NN start) where a shell volume < 1e-300."""
LOG_MAX_VOLUME = 300.0
"""DADApy caps the exponent of a shell volume (d log r_{j+1} + log(1 - ratio^d)) at 300."""
EPS64 = float(np.finfo(np.float64).eps)
"""DADApy's test for a singular Hessian (det < eps of float64)."""
FLOAT32_EPS = float(np.finfo(np.float32).eps)


# -- option checks ------------------------------------------------------------------


def _points(x, mask, k, k_name=None):
    """x as float32 [..., N, D] and the valid mask [..., N], after the static check that
    k neighbours fit in N points (naming ``k_name``, or x) and the value checks (k + 1
    valid points per cloud, finite values)."""
    x = validation.as_points(x, "x")
    if k_name is not None:
        validation.check_neighbours_fit(x.shape[-2], k, k_name)
    elif x.shape[-2] < k + 1:
        raise ValueError(f"x: PAk needs N >= {k + 1} points per cloud, got N = {x.shape[-2]}")
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask, min_valid=max(k + 1, validation.MIN_VALID_POINTS))
    valid = jnp.ones(x.shape[:-1], bool) if mask is None else mask
    return x, mask, valid


def _intrinsic_dim(intrinsic_dim, batch_shape):
    """intrinsic_dim (a number or an array broadcasting to the batch shape) as float32
    [batch], refused unless > 0 and finite (checked where it is concrete)."""
    d = validation.as_array(intrinsic_dim, "intrinsic_dim")
    if not hasattr(d, "dtype") or not (
        jnp.issubdtype(d.dtype, jnp.floating) or jnp.issubdtype(d.dtype, jnp.integer)
    ):
        raise ArgumentError(
            "{intrinsic_dim} must be a number or an array of numbers, got {value!r}",
            "intrinsic_dim",
            value=intrinsic_dim,
        )
    try:
        fits = np.broadcast_shapes(tuple(d.shape), tuple(batch_shape)) == tuple(batch_shape)
    except ValueError:
        fits = False
    if not fits:
        raise ArgumentError(
            "{intrinsic_dim} of shape {shape} does not broadcast to the batch shape {batch}",
            "intrinsic_dim",
            shape=tuple(d.shape),
            batch=tuple(batch_shape),
        )
    if validation.is_concrete(d):
        values = np.asarray(d, np.float64)
        if not np.all(np.isfinite(values) & (values > 0)):
            raise ArgumentError(
                "{intrinsic_dim} must be > 0 and finite, got {value!r}",
                "intrinsic_dim",
                value=intrinsic_dim,
            )
    return jnp.broadcast_to(jnp.asarray(d, jnp.float32), tuple(batch_shape))


def _dims(x, mask, intrinsic_dim):
    """One intrinsic dimension per cloud [batch]: the given one, or TwoNN's."""
    if intrinsic_dim is None:
        return twonn(x, mask)
    return _intrinsic_dim(intrinsic_dim, x.shape[:-2])


@functools.partial(jax.jit, static_argnames=("fn", "options"))
def _per_cloud(fn, x, valid, dim, options):
    """fn(x [N, D], valid [N], dim [], **options) -> arrays [N], over the leading axes."""
    kwargs = dict(options)
    batch, (n, d) = x.shape[:-2], x.shape[-2:]
    xf = x.reshape((-1, n, d))
    vf = valid.reshape((-1, n))
    xf = jnp.where(vf[..., None], xf, 0.0)
    out = jax.vmap(lambda a, m, e: fn(a, m, e, **kwargs))(xf, vf, dim.reshape(-1))
    return jax.tree_util.tree_map(lambda o: o.reshape(batch + (n,)), out)


def _run(fn, x, valid, dim, **options):
    return _per_cloud(fn, x, valid, dim, tuple(sorted(options.items())))


def log_unit_ball(d):
    """log V_d, V_d = pi^(d/2) / Gamma(d/2 + 1) the volume of the unit d-ball (DADApy's
    ``prefactor``)."""
    return 0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1.0)


# -- k-NN ---------------------------------------------------------------------------


def _knn_density(x, valid, dim, k):
    dist, _ = knn(x, valid, k)
    count = jnp.sum(valid).astype(jnp.float32)
    log_den = math.log(k) - log_unit_ball(dim) - dim * jnp.log(dist[:, k - 1]) - jnp.log(count)
    err = jnp.full(valid.shape, 1.0 / math.sqrt(k), jnp.float32)
    return jnp.where(valid, log_den, jnp.nan), jnp.where(valid, err, jnp.nan)


def knn_density(x, mask=None, *, k=16, intrinsic_dim=None):
    """k-nearest-neighbour log density of every point.

    ``log rho_i = log k - log N - log V_d - d log r_ik``: k points in the d-ball of
    radius r_ik (the distance to the k-th nearest other point, duplicates included at
    distance 0) around x_i, N the number of valid points of the cloud, V_d the volume
    of the unit d-ball. The error is DADApy's 1 / sqrt(k) (the relative error of a
    Poisson count k). +inf where r_ik = 0 (k or more duplicates of x_i).

    Args:
      x: [..., N, D] float points.
      mask: optional bool [..., N] of valid points.
      k: neighbours, >= 1, <= N_valid - 1 (DADApy's ``k``, not counting the point).
      intrinsic_dim: d, a number > 0 or an array of them broadcasting to the batch shape
        [...]; None: each cloud's TwoNN estimate (:func:`geom_jax.metrics.twonn`).

    Returns:
      (log_density, log_density_err), float32 [..., N] each, NaN at invalid points.

    Reference: DADApy 0.3.4 ``Data(x).compute_density_kNN(k)`` (Glielmo, Macocco,
    Doimo, Carli, Zeni, Wild, d'Errico, Rodriguez & Laio 2022, Patterns 3, 100589,
    arXiv 2205.03373); the estimator as reviewed in d'Errico, Facco, Laio & Rodriguez
    2021 (Information Sciences 560, 476; arXiv 1802.10549).
    """
    validation.check_int(k, "k", 1)
    x, mask, valid = _points(x, mask, k, "k")
    dim = _dims(x, mask, intrinsic_dim)
    return _run(_knn_density, x, valid, dim, k=int(k))


# -- PAk ------------------------------------------------------------------------------


def pak_threshold(alpha=PAK_ALPHA):
    """Dthr = chi2.isf(alpha, 1) = (the upper alpha/2 normal quantile)^2, in float64
    on the host (23.928 for DADApy's alpha = 1e-6)."""
    return statistics.NormalDist().inv_cdf(alpha / 2.0) ** 2


def log_cosh(t):
    """log cosh t without cancellation: log1p(2 sinh^2(t/2)) for |t| <= 20, else
    |t| - log 2 + log1p(exp(-2|t|)); inf at +-inf, NaN at NaN."""
    s = jnp.sinh(0.5 * jnp.minimum(jnp.abs(t), 20.0))
    at = jnp.abs(t)
    return jnp.where(
        at > 20.0, at - math.log(2.0) + jnp.log1p(jnp.exp(-2.0 * at)), jnp.log1p(2.0 * s * s)
    )


def _kstar(dist, idx, valid, dim, max_k, dthr):
    """DADApy's k* [N] (``cython_density._compute_kstar``): for j = 4, 5, ... while
    j < min(max_k, N_valid - 1), the likelihood-ratio statistic that x_i and its j-th
    neighbour share one density over their (j - 1)-neighbourhoods, with V_i, V_j the
    volumes of the balls to their (j - 1)-th neighbours,
    dL = -2 (j - 1) (log V_i + log V_j - 2 log(V_i + V_j) + log 4)
       = 4 (j - 1) log cosh(d/2 log(r_i / r_j));
    k* = j - 1 at the first j with dL > Dthr, else min(max_k, N_valid - 1) - 1. A NaN
    statistic (both radii 0) passes the test, an infinite one (one radius 0) fails it,
    as in DADApy's float64 loop."""
    n_keep = dist.shape[-1]
    maxk = jnp.minimum(max_k, jnp.sum(valid) - 1)
    js = np.arange(4, n_keep)
    if js.size == 0:
        return jnp.full(valid.shape, PAK_FIRST_K, jnp.int32)
    ri = dist[:, js - 2]
    rj = dist[idx[:, js - 1], js - 2]
    t = 0.5 * dim * (jnp.log(ri) - jnp.log(rj))
    dl = 4.0 * (js - 1).astype(np.float32) * log_cosh(t)
    stop = (dl > dthr) | (js >= maxk)
    first = jnp.asarray(js)[jnp.argmax(stop, axis=-1)] - 1
    return jnp.where(jnp.any(stop, axis=-1), first, max(n_keep - 1, PAK_FIRST_K)).astype(jnp.int32)


def _pak_neighbours(x, valid, max_k):
    n_keep = min(max_k, x.shape[-2] - 1)
    return knn(x, valid, n_keep)


def _pak_kstar(x, valid, dim, max_k, dthr):
    dist, idx = _pak_neighbours(x, valid, max_k)
    kstar = _kstar(dist, idx, valid, dim, max_k, dthr)
    return jnp.where(valid, kstar, -1)


def _shell_log_volumes(dist, dim, log_ball):
    """log of DADApy's shell volumes [N, K]: shell j between the j-th and (j + 1)-th
    neighbour (the 0-th the point itself, at 0), V_d r_{j+1}^d (1 - (r_j / r_{j+1})^d),
    its exponent capped at 300; a shell between neighbours at identical distances gets
    the ratio 1 - 1e-14; NaN where both radii are 0 (DADApy's 0 / 0)."""
    r_next = dist
    r_prev = jnp.concatenate([jnp.zeros_like(dist[:, :1]), dist[:, :-1]], axis=-1)
    twin = (r_prev == 0) & (r_next == 0)
    tie = (r_prev == r_next) & ~twin
    log_ratio = jnp.where(tie, -TIE_WIDTH, jnp.log(r_prev) - jnp.log(jnp.where(twin, 1.0, r_next)))
    exponent = dim * jnp.log(r_next) + jnp.log(-jnp.expm1(dim * log_ratio))
    exponent = jnp.where(twin, jnp.nan, exponent)
    exponent = jnp.where(exponent > LOG_MAX_VOLUME, LOG_MAX_VOLUME, exponent)
    return log_ball + exponent


def _pak_density(x, valid, dim, max_k, dthr, max_iter):
    dist, idx = _pak_neighbours(x, valid, max_k)
    n_keep = dist.shape[-1]
    kstar = _kstar(dist, idx, valid, dim, max_k, dthr)
    kf = kstar.astype(jnp.float32)
    log_ball = log_unit_ball(dim)
    rk = jnp.take_along_axis(dist, (kstar - 1)[:, None], axis=-1)[:, 0]
    f0 = jnp.log(kf) - log_ball - dim * jnp.log(rk)  # the k*-NN estimate, DADApy's start
    log_vol = _shell_log_volumes(dist, dim, log_ball)
    shell = jnp.arange(n_keep) < kstar[:, None]
    tiny = jnp.any(shell & (log_vol < LOG_TINY_VOLUME), axis=-1)
    # g_j = V_j exp(F + a l) = exp(lw_j + G + a l), G = F - f0: moderate exponents
    lw = jnp.where(shell, log_vol + f0[:, None], -jnp.inf)
    ell = jnp.arange(1, n_keep + 1, dtype=jnp.float32)
    half = kf * (kf + 1.0) / 2.0

    def evaluate(g_off, a):
        """Gradient, Hessian and the gradient's float32 rounding scales: each g_l off by
        ~eps (2 + |its exponent|) relative, each sum by ~eps of its size."""
        arg = lw + g_off[:, None] + a[:, None] * ell
        g = jnp.where(shell, jnp.exp(arg), 0.0)
        s0 = jnp.sum(g, axis=-1)
        s1 = jnp.sum(g * ell, axis=-1)
        s2 = jnp.sum(g * ell * ell, axis=-1)
        w = jnp.where(shell, g * (2.0 + jnp.abs(arg)), 0.0)
        bound_f = FLOAT32_EPS * (kf + jnp.sum(w, axis=-1))
        bound_a = FLOAT32_EPS * (half + jnp.sum(w * ell, axis=-1))
        return kf - s0, half - s1, -s0, -s1, -s2, bound_f, bound_a

    def measure(g_off, a, grad_f, grad_a):
        f = f0 + g_off
        small = (jnp.abs(a) <= EPS64) | (jnp.abs(f) <= EPS64)
        rel = jnp.maximum(jnp.abs(grad_f / f), jnp.abs(grad_a / a))
        return jnp.where(small, jnp.maximum(jnp.abs(grad_f), jnp.abs(grad_a)), rel)

    zeros = jnp.zeros_like(f0)
    stepmax = 0.1 * jnp.abs(f0)
    run = valid & ~tiny

    def active(state):
        _, _, _, func, niter, steps, settled = state
        going = (func > PAK_GRADIENT_TOL) & (niter < max_iter) & (steps < max_iter)
        return run & going & ~settled

    def body(state):
        g_off, a, ev, func, niter, steps, settled = state
        grad_f, grad_a, h00, h01, h11, bound_f, bound_a = ev
        det = h00 * h11 - h01 * h01
        singular = det < EPS64
        # Newton step, damped (lr = 0.1) and capped at 0.1 |F_start| in F
        inv = 1.0 / jnp.where(singular, 1.0, det)
        delta_f = inv * (h11 * grad_f - h01 * grad_a)
        delta_a = inv * (-h01 * grad_f + h00 * grad_a)
        # float32's floor: the full Newton step in F (the distance left to the maximiser)
        # within its own rounding error, the gradient's bounds through the inverse
        # Hessian. DADApy's float64 criterion can be far below it where a ~ 0 (|dL/da| /
        # |a| <= 1e-3); float32 steps would then only wander by rounding noise.
        noise = jnp.abs(inv) * (jnp.abs(h11) * bound_f + jnp.abs(h01) * bound_a)
        floor = ~singular & (jnp.abs(delta_f) <= noise)
        lr = jnp.where(jnp.abs(0.1 * delta_f) > stepmax, jnp.abs(stepmax / delta_f), 0.1)
        g_newton = g_off - lr * delta_f
        a_newton = a - lr * delta_a
        # fixed-point step (singular Hessian): DADApy's, with grad_f - k = -sum g
        f_fix = (-a * half + (kf - grad_f)) / kf
        a_fix = (-f_fix * kf + (kf - grad_f)) / half
        g_new = jnp.where(singular, f_fix - f0, g_newton)
        a_new = jnp.where(singular, a_fix, a_newton)
        ev_new = evaluate(g_new, a_new)
        func_new = measure(g_new, a_new, ev_new[0], ev_new[1])
        on = active(state) & ~floor
        keep = lambda new, old: jnp.where(on, new, old)
        return (
            keep(g_new, g_off),
            keep(a_new, a),
            tuple(keep(n, o) for n, o in zip(ev_new, ev)),
            keep(func_new, func),
            niter + (on & ~singular),
            steps + on,
            settled | (active(state) & floor),
        )

    count = jnp.zeros_like(kstar)
    state = (zeros, zeros, evaluate(zeros, zeros), jnp.full_like(f0, 100.0), count, count, ~run)
    g_off, *_ = lax.while_loop(lambda s: jnp.any(active(s)), body, state)
    log_den = jnp.where(run, f0 + g_off, f0) - jnp.log(jnp.sum(valid).astype(jnp.float32))
    err = jnp.sqrt((4.0 * kf + 2.0) / (kf * (kf - 1.0)))
    return jnp.where(valid, log_den, jnp.nan), jnp.where(valid, err, jnp.nan)


def _pak_options(x, mask, intrinsic_dim, alpha, max_k):
    validation.check_open_unit(alpha, "alpha")
    validation.check_int(max_k, "max_k", PAK_FIRST_K + 1)
    x, mask, valid = _points(x, mask, PAK_FIRST_K)
    dim = _dims(x, mask, intrinsic_dim)
    return x, valid, dim, {"max_k": int(max_k), "dthr": pak_threshold(float(alpha))}


def pak_kstar(x, mask=None, *, intrinsic_dim=None, alpha=PAK_ALPHA, max_k=PAK_MAX_K):
    """The neighbourhood size k* of every point that :func:`pak_density` uses.

    For j = 4, 5, ... (j < min(max_k, N_valid - 1)) the likelihood-ratio test that x_i
    and its j-th neighbour x_j have the same density within their (j - 1)-neighbourhoods:
    with V_i, V_j the d-ball volumes to their (j - 1)-th neighbours,
    D_j = -2 (j - 1) (log V_i + log V_j - 2 log(V_i + V_j) + log 4); k* = j - 1 at the
    first j with D_j > Dthr = chi2.isf(alpha, 1), else min(max_k, N_valid - 1) - 1. So
    3 <= k* <= min(max_k, N_valid - 1) - 1 (3 when fewer neighbours exist). k* is kept
    separate from :func:`pak_density` (which returns DADApy's two outputs) and
    recomputed there; both share the neighbour lists' definition.

    Args:
      x: [..., N, D] float points.
      mask: optional bool [..., N] of valid points.
      intrinsic_dim: d, a number > 0 or an array of them broadcasting to the batch shape
        [...]; None: each cloud's TwoNN estimate (:func:`geom_jax.metrics.twonn`).
      alpha: significance of the test, in (0, 1) (DADApy's default 1e-6: Dthr = 23.928).
      max_k: DADApy's ``maxk``, the neighbour lists' length, >= 4.

    Returns:
      int32 [..., N], -1 at invalid points.

    Reference: DADApy 0.3.4 ``Data(x).compute_kstar(alpha)`` (its cython
    ``_compute_kstar``, without Bonferroni corrections); Rodriguez, d'Errico, Facco &
    Laio 2018 (J. Chem. Theory Comput. 14, 1206, "Computing the free energy without
    collective variables"); d'Errico, Facco, Laio & Rodriguez 2021 (arXiv 1802.10549).
    """
    x, valid, dim, options = _pak_options(x, mask, intrinsic_dim, alpha, max_k)
    return _run(_pak_kstar, x, valid, dim, **options)


def pak_density(
    x,
    mask=None,
    *,
    intrinsic_dim=None,
    alpha=PAK_ALPHA,
    max_k=PAK_MAX_K,
    max_iter=PAK_MAX_ITER,
):
    """Point-adaptive k-NN (PAk) log density of every point.

    For each point, its k* (:func:`pak_kstar`), then the maximiser F of the likelihood
    of the k* shell volumes v_l (between the (l - 1)-th and l-th neighbours, l = 1 ...
    k*) under a log density linear in the neighbour rank, log rho = F + a l:
    L(F, a) = sum_l (F + a l) - sum_l v_l exp(F + a l). As DADApy does: F starts at the
    k*-NN estimate log(k* / (V_d r_k*^d)) and a at 0, and moves by Newton steps damped
    to 0.1 of the step (and to at most 0.1 |F_start| in F), a fixed-point step where the
    Hessian is singular, until max(|dL/dF| / |F|, |dL/da| / |a|) <= 1e-3 or max_iter
    steps (so F is DADApy's iterate, within ~1e-3 of the exact maximiser, not the
    maximiser itself). One stop is float32's own: where that rule asks for a gradient
    below its float32 rounding (|dL/da| <= 1e-3 |a| with a ~ 0), steps end once the full
    Newton step in F is within its rounding error (F then lies within ~1e-5 of the
    maximiser, where DADApy's float64 steps also end up). A shell between neighbours at
    identical distances gets the width ratio 1 - 1e-14, a shell volume below 1e-300
    keeps the start. Returns F - log N and the error sqrt((4 k* + 2) / (k* (k* - 1))).
    NaN at a point with a twin (its first shell is 0 / 0, as in DADApy).

    Args:
      x: [..., N, D] float points.
      mask: optional bool [..., N] of valid points.
      intrinsic_dim: d, a number > 0 or an array of them broadcasting to the batch shape
        [...]; None: each cloud's TwoNN estimate (:func:`geom_jax.metrics.twonn`).
      alpha: significance of k*'s likelihood-ratio test, in (0, 1) (DADApy's 1e-6).
      max_k: DADApy's ``maxk``, the neighbour lists' length, >= 4 (DADApy's 100).
      max_iter: cap on the Newton steps (DADApy's 10000), >= 1.

    Returns:
      (log_density, log_density_err), float32 [..., N] each, NaN at invalid points.

    Reference: Rodriguez, d'Errico, Facco & Laio 2018 (J. Chem. Theory Comput. 14,
    1206, the PAk estimator); d'Errico, Facco, Laio & Rodriguez 2021 (Information
    Sciences 560, 476; arXiv 1802.10549, the k* selection); DADApy 0.3.4
    ``Data(x).compute_density_PAk()`` (``optimized=True``: cython
    ``_nrmaxl`` of ``cython_maximum_likelihood_opt_full``).
    """
    validation.check_int(max_iter, "max_iter", 1)
    x, valid, dim, options = _pak_options(x, mask, intrinsic_dim, alpha, max_k)
    return _run(_pak_density, x, valid, dim, max_iter=int(max_iter), **options)
