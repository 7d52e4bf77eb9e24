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
* Neighbours are exact. The public functions find them with
  :func:`geom_jax.metrics.measures.id_battery.knn` (squared distances by direct
  differences, 0 between identical points, and ``lax.top_k``, ties to the lower index:
  a dense [N, N] path), then call the list kernels (:func:`knn_density_from_lists`,
  :func:`pak_kstar_from_lists`, :func:`pak_from_lists`); the observable ``density``
  calls the same kernels on the engine's exact neighbour lists (either neighbour path:
  no N x N array on the blocked one), with the dimension of the run's own TwoNN.
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
from geom_jax.metrics.declare.observable import (
    PER_PROMPT,
    POOLED,
    Field,
    Observable,
    Option,
    ReportSection,
)
from geom_jax.metrics.measures.id_battery import knn
from geom_jax.metrics.measures.intrinsic_dimension import (
    TWONN_DISCARD_FRACTION,
    twonn,
    twonn_from_neighbours,
)
from geom_jax.metrics.measures.sections import density as sections

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
    """fn(x [C, N, D], valid [C, N], dim [C], **options) -> arrays [C, N], on the clouds
    of the leading axes flattened to C."""
    kwargs = dict(options)
    xf, vf, batch = validation.flat_clouds(x, valid)
    out = fn(xf, vf, dim.reshape(-1), **kwargs)
    return jax.tree_util.tree_map(lambda o: o.reshape(batch + x.shape[-2:-1]), out)


def _run(fn, x, valid, dim, **options):
    return _per_cloud(fn, x, valid, dim, tuple(sorted(options.items())))


def _lists(x, valid, k):
    """(dist, idx) [C, N, k] of clouds x [C, N, D] (id_battery.knn, one cloud at a time)."""
    return jax.vmap(lambda a, m: knn(a, m, k))(x, valid)


def log_unit_ball(d):
    """log V_d, V_d = pi^(d/2) / Gamma(d/2 + 1) the volume of the unit d-ball (DADApy's
    ``prefactor``)."""
    return 0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1.0)


# -- k-NN ---------------------------------------------------------------------------


def knn_density_from_lists(dist, valid, dim, k):
    """k-NN log density and its error of clouds from their neighbour lists.

    Args:
      dist: float32 [C, N, K], K >= k: each point's distances to its nearest valid
        points in increasing order, the point itself excluded, duplicates included (at
        0), in the input's units.
      valid: bool [C, N].
      dim: float32 [C], each cloud's intrinsic dimension d.
      k: the neighbour whose distance r_k sets the volume (static).

    Returns:
      (log_density, log_density_err) float32 [C, N]: log k - log N_valid - log V_d -
      d log r_k and 1 / sqrt(k), NaN at invalid points (see :func:`knn_density`).
    """
    count = jnp.sum(valid, axis=-1).astype(jnp.float32)
    d = dim[:, None]
    log_den = math.log(k) - log_unit_ball(d) - d * jnp.log(dist[..., k - 1])
    log_den = log_den - jnp.log(count)[:, None]
    err = jnp.full(valid.shape, 1.0 / math.sqrt(k), jnp.float32)
    return jnp.where(valid, log_den, jnp.nan), jnp.where(valid, err, jnp.nan)


def _knn_density(x, valid, dim, k):
    dist, _ = _lists(x, valid, k)
    return knn_density_from_lists(dist, valid, dim, k)


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


def pak_kstar_from_lists(dist, idx, valid, dim, max_k, dthr):
    """DADApy's k* [C, N] (``cython_density._compute_kstar``) of clouds from their
    neighbour lists dist, idx [C, N, K] (K = min(max_k, N - 1): distances in increasing
    order and the neighbours' indices, the point itself excluded, duplicates included;
    entries beyond the valid neighbours are never read, whatever they hold), valid
    [C, N], dim [C] and the threshold dthr: for j = 4, 5, ... while
    j < min(max_k, N_valid - 1), the likelihood-ratio statistic that x_i and its j-th
    neighbour share one density over their (j - 1)-neighbourhoods, with V_i, V_j the
    volumes of the balls to their (j - 1)-th neighbours,
    dL = -2 (j - 1) (log V_i + log V_j - 2 log(V_i + V_j) + log 4)
       = 4 (j - 1) log cosh(d/2 log(r_i / r_j));
    k* = j - 1 at the first j with dL > Dthr, else min(max_k, N_valid - 1) - 1. A NaN
    statistic (both radii 0) passes the test, an infinite one (one radius 0) fails it,
    as in DADApy's float64 loop. Returns int32 [C, N], -1 at invalid points."""
    return jax.vmap(functools.partial(_kstar, max_k=max_k, dthr=dthr))(dist, idx, valid, dim)


def _kstar(dist, idx, valid, dim, max_k, dthr):
    """:func:`pak_kstar_from_lists` of one cloud: dist, idx [N, K], valid [N], dim []."""
    n_keep = dist.shape[-1]
    maxk = jnp.minimum(max_k, jnp.sum(valid) - 1)
    js = np.arange(4, n_keep)
    if js.size == 0:
        return jnp.where(valid, PAK_FIRST_K, -1).astype(jnp.int32)
    ri = dist[:, js - 2]
    rj = dist[jnp.maximum(idx[:, js - 1], 0), js - 2]
    t = 0.5 * dim * (jnp.log(ri) - jnp.log(rj))
    dl = 4.0 * (js - 1).astype(np.float32) * log_cosh(t)
    stop = (dl > dthr) | (js >= maxk)
    first = jnp.asarray(js)[jnp.argmax(stop, axis=-1)] - 1
    kstar = jnp.where(jnp.any(stop, axis=-1), first, max(n_keep - 1, PAK_FIRST_K))
    return jnp.where(valid, kstar, -1).astype(jnp.int32)


def _pak_neighbours(x, valid, max_k):
    return _lists(x, valid, min(max_k, x.shape[-2] - 1))


def _pak_kstar(x, valid, dim, max_k, dthr):
    dist, idx = _pak_neighbours(x, valid, max_k)
    return pak_kstar_from_lists(dist, idx, valid, dim, max_k, dthr)


def _shell_log_volumes(dist, dim, log_ball):
    """log of DADApy's shell volumes [..., N, K] (dim and log_ball broadcasting against
    it): shell j between the j-th and (j + 1)-th neighbour (the 0-th the point itself,
    at 0), V_d r_{j+1}^d (1 - (r_j / r_{j+1})^d), its exponent capped at 300; a shell
    between neighbours at identical distances gets the ratio 1 - 1e-14; NaN where both
    radii are 0 (DADApy's 0 / 0)."""
    r_next = dist
    r_prev = jnp.concatenate([jnp.zeros_like(dist[..., :1]), dist[..., :-1]], axis=-1)
    twin = (r_prev == 0) & (r_next == 0)
    tie = (r_prev == r_next) & ~twin
    log_ratio = jnp.where(tie, -TIE_WIDTH, jnp.log(r_prev) - jnp.log(jnp.where(twin, 1.0, r_next)))
    exponent = dim * jnp.log(r_next) + jnp.log(-jnp.expm1(dim * log_ratio))
    exponent = jnp.where(twin, jnp.nan, exponent)
    exponent = jnp.where(exponent > LOG_MAX_VOLUME, LOG_MAX_VOLUME, exponent)
    return log_ball + exponent


PAK_FIRST_STEPS = 128
"""Newton steps every point takes together; the points still going after them go on in
batches of max(PAK_STRAGGLERS, N / 64) (N the points of all clouds together), so that
the slowest cost their own steps, not everyone's: on the density fixture's mixture the
median point stops after 118 steps, the slowest after 2,641."""
PAK_STRAGGLERS = 64


def _stepper(lw, shell, kf, f0, run, max_iter):
    """DADApy's damped Newton steps for points [P]: lw [P, K] the log shell volumes plus
    f0 (-inf beyond k*), shell [P, K] the shells l < k*, kf [P] k*, f0 [P] the start, run
    [P] the points to maximise. Returns (start state, active(state) -> bool [P],
    step(state) -> state); G = F - f0 is the state's first entry (0 where not run)."""
    ell = jnp.arange(1, lw.shape[-1] + 1, dtype=jnp.float32)
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

    count = jnp.zeros(f0.shape, jnp.int32)
    state = (zeros, zeros, evaluate(zeros, zeros), jnp.full_like(f0, 100.0), count, count, ~run)
    return state, active, body


def _maximise(lw, shell, kf, f0, run, max_iter):
    """G = F - f0 [N] after DADApy's steps (:func:`_stepper`'s arguments, for N points):
    PAK_FIRST_STEPS steps of every point at once, then the stragglers' steps, a batch of
    them at a time (each point's steps are the same either way)."""
    inputs = (lw, shell, kf, f0, run)
    state, active, step = _stepper(*inputs, max_iter)
    state = lax.while_loop(
        lambda s: (s[0] < PAK_FIRST_STEPS) & jnp.any(active(s[1])),
        lambda s: (s[0] + 1, step(s[1])),
        (0, state),
    )[1]
    n = f0.shape[0]
    size = min(max(PAK_STRAGGLERS, n // 64), n)

    def stragglers(state):
        at = jnp.nonzero(active(state), size=size, fill_value=n)[0]
        take = lambda a: jnp.take(a, at, axis=0, mode="clip")  # noqa: E731
        mine = jax.tree.map(take, inputs[:4]) + (take(run) & (at < n),)
        _, active_mine, step_mine = _stepper(*mine, max_iter)
        part = lax.while_loop(
            lambda s: jnp.any(active_mine(s)), step_mine, jax.tree.map(take, state)
        )
        return jax.tree.map(lambda a, p: a.at[at].set(p, mode="drop"), state, part)

    return lax.while_loop(lambda s: jnp.any(active(s)), stragglers, state)[0]


def pak_from_lists(dist, idx, valid, dim, max_k, dthr, max_iter):
    """PAk log density, its error and k* of clouds from their neighbour lists.

    Args:
      dist, idx: float32 / int32 [C, N, K], K = min(max_k, N - 1): each point's
        distances to its nearest valid points in increasing order (in the input's units)
        and their indices, the point itself excluded, duplicates included (entries
        beyond the valid neighbours are never read).
      valid: bool [C, N].
      dim: float32 [C], each cloud's intrinsic dimension d.
      max_k, dthr, max_iter: DADApy's maxk, the threshold of k*'s test and the cap on
        Newton steps (static).

    Returns:
      (log_density, log_density_err, kstar), float32, float32, int32 [C, N]; NaN (k*
      -1) at invalid points (see :func:`pak_density` and :func:`pak_kstar`). The
      Newton steps run on the points of all C clouds together (:func:`_maximise`).
    """
    (c, n), n_keep = valid.shape, dist.shape[-1]
    kstar = pak_kstar_from_lists(dist, idx, valid, dim, max_k, dthr)
    kstar = jnp.where(valid, kstar, PAK_FIRST_K)
    kf = kstar.astype(jnp.float32)
    d = dim[:, None]
    log_ball = log_unit_ball(d)
    rk = jnp.take_along_axis(dist, (kstar - 1)[..., None], axis=-1)[..., 0]
    f0 = jnp.log(kf) - log_ball - d * jnp.log(rk)  # the k*-NN estimate, DADApy's start
    log_vol = _shell_log_volumes(dist, d[..., None], log_ball[..., None])
    shell = jnp.arange(n_keep) < kstar[..., None]
    tiny = jnp.any(shell & (log_vol < LOG_TINY_VOLUME), axis=-1)
    # g_j = V_j exp(F + a l) = exp(lw_j + G + a l), G = F - f0: moderate exponents
    lw = jnp.where(shell, log_vol + f0[..., None], -jnp.inf)
    run = valid & ~tiny
    points = lambda a: a.reshape((c * n,) + a.shape[2:])  # noqa: E731
    g_off = _maximise(*map(points, (lw, shell, kf, f0, run)), max_iter).reshape(c, n)
    count = jnp.sum(valid, axis=-1).astype(jnp.float32)
    log_den = jnp.where(run, f0 + g_off, f0) - jnp.log(count)[:, None]
    err = jnp.sqrt((4.0 * kf + 2.0) / (kf * (kf - 1.0)))
    return (
        jnp.where(valid, log_den, jnp.nan),
        jnp.where(valid, err, jnp.nan),
        jnp.where(valid, kstar, -1),
    )


def _pak_density(x, valid, dim, max_k, dthr, max_iter):
    dist, idx = _pak_neighbours(x, valid, max_k)
    return pak_from_lists(dist, idx, valid, dim, max_k, dthr, max_iter)[:2]


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


# -- the observable ---------------------------------------------------------------------

DENSITY_K = Option(
    "density_k",
    int,
    16,
    "Neighbours of the k-NN log density (DADApy's compute_density_kNN k; Doimo et al. 2024 "
    "use 16).",
    check=lambda v: validation.check_int(v, "density_k", 1),
)

PAK_ALPHA_OPTION = Option(
    "pak_alpha",
    float,
    PAK_ALPHA,
    "Significance of the likelihood-ratio test choosing PAk's k* (DADApy's 1e-6: Dthr = 23.93).",
    check=lambda v: validation.check_open_unit(v, "pak_alpha"),
)

PAK_MAX_K_OPTION = Option(
    "pak_max_k",
    int,
    PAK_MAX_K,
    "DADApy's maxk: neighbours per point of PAk (k* <= pak_max_k - 1) and of the ADP "
    "clustering, capped at N - 1 (the value used is recorded).",
    check=lambda v: validation.check_int(v, "pak_max_k", PAK_FIRST_K + 1),
    resolve=lambda v, n, kind: min(v, n - 1),
)

OPTIONS = (DENSITY_K, PAK_ALPHA_OPTION, PAK_MAX_K_OPTION, TWONN_DISCARD_FRACTION)
"""The options of ``density``, which the ADP observables read too."""


def list_width(options):
    """Neighbours per point the density observables read: max(density_k, pak_max_k)
    (pak_max_k resolved to at most N - 1, density_k checked to be <= N - 1)."""
    return max(options["density_k"], options["pak_max_k"])


def check_options(options, n):
    """The static checks of the density observables for clouds of n points."""
    validation.check_neighbours_fit(n, options["density_k"], "density_k")
    if n < PAK_FIRST_K + 1:
        raise ValueError(f"density: PAk needs N >= {PAK_FIRST_K + 1} points per cloud, got N = {n}")


def min_points(options):
    """(valid points, distinct points, what needs them) per cloud of the density
    observables."""
    k = options["density_k"]
    need = max(k + 1, PAK_FIRST_K + 1)
    return (need, validation.MIN_VALID_POINTS, f"density_k={k} (PAk: at least {PAK_FIRST_K + 1})")


def run_twonn(ctx):
    """TwoNN [C] of the chunk's clouds as the engine computes it (``twonn``: distinct
    points, linear fit without the largest twonn_discard_fraction of the ratios)."""
    sq, _ = ctx.knn_unique(2)
    keep = ctx.unique
    r = jnp.sqrt(jnp.where(keep[..., None], sq, 1.0))
    discard = ctx.options[TWONN_DISCARD_FRACTION.name]
    return twonn_from_neighbours(r[..., 0], r[..., 1], keep, discard)


def _densities(ctx):
    o = ctx.options
    n = ctx.x.shape[-2]
    width = list_width(o)
    n_keep = min(o["pak_max_k"], n - 1)
    sq = ctx.knn_sq_at(range(width))
    # the clouds were divided by 2**exponent: log densities need the input's units
    dist = jnp.ldexp(jnp.sqrt(sq), ctx.exponent[:, None, None])
    idx = ctx.knn_idx[..., :width]
    dim = run_twonn(ctx)
    knn_den, knn_err = knn_density_from_lists(dist, ctx.valid, dim, o["density_k"])
    dthr = pak_threshold(o["pak_alpha"])
    lists = (dist[..., :n_keep], idx[..., :n_keep], ctx.valid, dim)
    pak_den, pak_err, kstar = pak_from_lists(*lists, o["pak_max_k"], dthr, PAK_MAX_ITER)
    return {
        "dim": dim,
        "knn": (knn_den, knn_err),
        "pak": (pak_den, pak_err, kstar),
        "idx": idx,
    }


def densities(ctx):
    """The chunk's k-NN and PAk densities, computed once per layer chunk for every
    observable that reads them (``ctx.cached``): a dict with ``dim`` [C] (TwoNN),
    ``knn`` (log density, error) [C, N], ``pak`` (log density, error, k*) [C, N] and
    ``idx`` [C, N, list_width] (the neighbour lists they used)."""
    return ctx.cached("density.densities", _densities)


def _mean_and_spread(values, valid):
    """Mean and standard deviation (ddof 0) [C] over the valid points with finite values."""
    ok = valid & jnp.isfinite(values)
    count = jnp.sum(ok, axis=-1)
    mean = jnp.sum(jnp.where(ok, values, 0.0), axis=-1) / jnp.maximum(count, 1)
    dev = jnp.where(ok, values - mean[..., None], 0.0)
    std = jnp.sqrt(jnp.sum(dev * dev, axis=-1) / jnp.maximum(count, 1))
    return jnp.where(count > 0, mean, jnp.nan), jnp.where(count > 0, std, jnp.nan)


def _density_fields(ctx):
    d = densities(ctx)
    knn_den, _ = d["knn"]
    pak_den, pak_err, kstar = d["pak"]
    pak_mean, pak_std = _mean_and_spread(pak_den, ctx.valid)
    kstar_median = jnp.nanmedian(jnp.where(ctx.valid, kstar.astype(jnp.float32), jnp.nan), -1)
    return {
        "density_id": d["dim"],
        "knn_log_density": knn_den,
        "pak_log_density": pak_den,
        "pak_log_density_err": pak_err,
        "pak_kstar": kstar,
        "knn_log_density_mean": _mean_and_spread(knn_den, ctx.valid)[0],
        "pak_log_density_mean": pak_mean,
        "pak_log_density_std": pak_std,
        "pak_kstar_median": kstar_median,
    }


OBSERVABLE = Observable(
    name="density",
    compute=_density_fields,
    fields=(
        Field("density_id", (), "intrinsic dimension of the densities: the layer's TwoNN."),
        Field(
            "knn_log_density",
            ("token",),
            "k-NN log density of each point (k = density_k; error 1 / sqrt(k)), NaN at "
            "padding, +inf with k or more duplicates.",
            tokens=True,
        ),
        Field(
            "pak_log_density",
            ("token",),
            "PAk log density of each point, NaN at padding and at points with a twin.",
            tokens=True,
        ),
        Field(
            "pak_log_density_err",
            ("token",),
            "its error sqrt((4 k* + 2) / (k* (k* - 1))), NaN at padding.",
            tokens=True,
        ),
        Field(
            "pak_kstar",
            ("token",),
            "PAk's neighbourhood size k* of each point, -1 at padding.",
            dtype="int32",
            tokens=True,
        ),
        Field(
            "knn_log_density_mean",
            (),
            "mean k-NN log density over the valid points with a finite one.",
        ),
        Field(
            "pak_log_density_mean",
            (),
            "mean PAk log density over the valid points with a finite one (twins left out).",
        ),
        Field(
            "pak_log_density_std",
            (),
            "standard deviation (ddof 0) of the PAk log density over the same points.",
        ),
        Field("pak_kstar_median", (), "median k* over the valid points."),
    ),
    consumes=("points", "unique", "knn", "knn_unique"),
    doc=__doc__,
    reference=(
        "DADApy 0.3.4 compute_density_kNN / compute_density_PAk; Rodriguez et al. 2018 "
        "(JCTC 14, 1206); d'Errico et al. 2021, arXiv 1802.10549"
    ),
    reduce="per point; summaries over the valid points",
    options=OPTIONS,
    knn_k=list_width,
    knn_unique_k=lambda o: 2,
    check=check_options,
    min_points=min_points,
    in_all=False,
    report=(
        ReportSection(
            "Point density across layers",
            figure=sections.plot_density,
            text=sections.density_text,
            needs=("pak_log_density_mean",),
            file="density.png",
            kinds=(PER_PROMPT, POOLED),
        ),
    ),
)
