"""Persistent-homology dimension (PHD) of a cloud, from minimum spanning trees of
random subsamples (Tulchinskii et al. 2023).

For each subsample size n in range(min_points, max_points, step), ``restarts`` random
subsets of n valid points are drawn independently (without replacement within a
subset); E_alpha(n) = sum over the edges e of the subset's Euclidean minimum spanning
tree of |e|^alpha (the 0-dimensional persistent-homology total lifetime); the median
over the subsets is kept (over the first RESTARTS_LARGE subsets only when the cloud has
at most 2 n valid points, as the authors do). m = the least-squares slope of log E
against log n; the whole computation is repeated ``reruns`` times, the slopes averaged,
and d = alpha / (1 - m).

This follows the authors' code (github.com/ArGintum/GPTID, ``IntrinsicDim.py``, class
``PHD``: defaults alpha 1, n_reruns 3, n_points 7, n_points_min 3, and ``fit_transform``'s
min_points 50, max_points 512 (exclusive), point_jump 40), with two deliberate
differences: the subsets come from seeded JAX keys (one per rerun, size and subset,
the same for every cloud and layer, so that layers of a prompt are measured on the
same subsets) instead of NumPy's global generator; and d = alpha / (1 - m) as the
paper defines it, where the code returns 1 / (1 - m) whatever alpha (the same at the
default alpha = 1). A third: NaN where m >= 1, where the code returns a negative or
infinite d. The total length of a minimum spanning tree of n points of a set of
dimension d grows as n^((d - alpha) / d), slower than n; a slope of 1 or more means the
subsets differ by more than their size, e.g. one far point (a massive activation in a
prompt's token cloud) in some subsets and not others, and no dimension fits it.

Trees are exact: Prim's algorithm on the subset's centred-Gram squared distances
(float32, HIGHEST precision) chooses the edges, whose lengths are then taken by direct
differences; the Gram rounding can only swap edges of (near-)equal length. A subset
holds at most max_points points, so its dense [n, n] distances are small even when the
cloud has 10^5 points. The issue's other route, the minimum spanning tree of the
cloud's k-NN graph (for a whole pooled cloud, where it is connected), is not
implemented: the authors' estimator never needs a tree of the whole cloud.

Reference: Tulchinskii, Kuznetsov, Kushnareva, Cherniavskii, Nikolenko, Burnaev,
Barannikov & Piontkovskaya 2023, "Intrinsic dimension estimation for robust detection
of AI-generated texts", NeurIPS, arXiv:2306.04723 (section 3); Schweinhart 2021
(persistent-homology dimension, alpha-weighted MST lengths).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from geom_jax.errors import ArgumentError
from geom_jax.metrics import validation

HIGHEST = lax.Precision.HIGHEST

MIN_POINTS, MAX_POINTS, STEP = 50, 512, 40
"""The authors' fit_transform defaults: subsample sizes 50, 90, ..., 490."""
ALPHA, RESTARTS, RERUNS = 1.0, 7, 3
"""The authors' PHD() defaults: alpha, n_points (subsets per size), n_reruns."""
RESTARTS_LARGE = 3
"""Subsets whose median is taken at sizes n with at most 2 n valid points (n_points_min)."""


def sizes(min_points, max_points, step):
    """The subsample sizes range(min_points, max_points, step), as a tuple."""
    return tuple(range(int(min_points), int(max_points), int(step)))


def check_options(min_points, max_points, step, alpha, restarts, reruns, seed, prefix=""):
    """Refuses bad options, naming each (with ``prefix``: the observable's names);
    returns the subsample sizes."""
    validation.check_int(min_points, prefix + "min_points", 2)
    validation.check_int(step, prefix + "step", 1)
    validation.check_int(max_points, prefix + "max_points", 1)
    got = sizes(min_points, max_points, step)
    if len(got) < 2:
        lo, hi, by = (prefix + k for k in ("min_points", "max_points", "step"))
        raise ArgumentError(
            "{" + lo + "}={lo_v}, {" + hi + "}={hi_v} (excluded) and {" + by + "}={by_v} give "
            "fewer than 2 subsample sizes: the slope needs two",
            (lo, hi, by),
            lo_v=min_points,
            hi_v=max_points,
            by_v=step,
        )
    if not validation.is_number(alpha) or not alpha > 0:
        raise ArgumentError(
            "{" + prefix + "alpha} must be a number > 0, got {value!r}",
            prefix + "alpha",
            value=alpha,
        )
    validation.check_int(restarts, prefix + "restarts", 1)
    validation.check_int(reruns, prefix + "reruns", 1)
    validation.check_int(seed, prefix + "seed", 0)
    return got


def draws(restarts):
    """Subsets drawn per rerun and size: enough for both medians."""
    return max(int(restarts), RESTARTS_LARGE)


def subsample_indices(valid, j, size, restarts, reruns, seed):
    """The subsets of size index j (an int, traced or not): int32 [reruns, draws(restarts),
    size], each row distinct valid indices of valid [N] in increasing order of a seeded
    uniform key (key: the seed, j, the rerun and the draw), so that its first n entries
    are a uniform random subset of n valid points (needs n valid points)."""
    keys = jax.random.split(
        jax.random.fold_in(jax.random.PRNGKey(seed), j), reruns * draws(restarts)
    )
    u = jax.vmap(lambda key: jax.random.uniform(key, valid.shape))(keys)
    _, idx = lax.top_k(-jnp.where(valid, u, 2.0), size)
    return idx.reshape(reruns, draws(restarts), size).astype(jnp.int32)


def prim_parents(d2, n):
    """Parent of each vertex [M] int32 in a minimum spanning tree of the complete graph
    on the first n vertices (n traced or not) with weights d2 [M, M] (any increasing
    function of the lengths), rooted at vertex 0 (its own parent; vertices from n on
    are left out, parent 0): Prim's algorithm, the nearest outside vertex joining at
    each step (lowest index on ties), its parent the tree vertex it is nearest to (the
    earliest to join on ties)."""
    m = d2.shape[-1]
    vertex = jnp.arange(m)

    def join(_, state):
        in_tree, best, source, parent = state
        v = jnp.argmin(jnp.where(in_tree, jnp.inf, best))
        parent = parent.at[v].set(source[v])
        in_tree = in_tree.at[v].set(True)
        closer = d2[v] < best
        return in_tree, jnp.where(closer, d2[v], best), jnp.where(closer, v, source), parent

    start = ((vertex == 0) | (vertex >= n), d2[0], jnp.zeros(m, jnp.int32), jnp.zeros(m, jnp.int32))
    return lax.fori_loop(1, n, join, start)[3]


def mst_weight(points, n, alpha):
    """sum over the edges of a Euclidean minimum spanning tree of points[:n] (points
    [M, D], n traced or not) of |e|^alpha: edges chosen on centred-Gram squared
    distances, lengths by direct differences."""
    inside = jnp.arange(points.shape[0]) < n
    centre = jnp.sum(jnp.where(inside[:, None], points, 0.0), axis=0) / n
    c = jnp.where(inside[:, None], points - centre, 0.0)
    sq = jnp.einsum("nd,nd->n", c, c, precision=HIGHEST)
    g = jnp.einsum("nd,md->nm", c, c, precision=HIGHEST)
    parent = prim_parents(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0), n)
    diff = points - points[parent]
    length = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
    if alpha != 1.0:
        length = length**alpha
    return jnp.sum(jnp.where(inside & (jnp.arange(points.shape[0]) > 0), length, 0.0))


def _median_of_first(values, m):
    """np.median of values[..., :m] (static m)."""
    s = jnp.sort(values[..., :m], axis=-1)
    return 0.5 * (s[..., (m - 1) // 2] + s[..., m // 2])


def slope(x, y):
    """Least-squares slope of y [..., J] against x [J]."""
    dx = x - jnp.mean(x)
    dy = y - jnp.mean(y, axis=-1, keepdims=True)
    return jnp.sum(dx * dy, axis=-1) / jnp.sum(dx * dx)


def phd_of_cloud(x, valid, *, n_sizes, alpha, restarts, reruns, seed):
    """PHD of one cloud x [N, D] with valid [N] (at least max(n_sizes) valid points):
    the sizes one at a time (lax.map), every subset padded to the largest size."""
    count = jnp.sum(valid)
    size = max(n_sizes)

    def log_weight(args):
        j, n = args
        idx = subsample_indices(valid, j, size, restarts, reruns, seed)
        weight = jax.vmap(jax.vmap(lambda i: mst_weight(x[i], n, alpha)))(idx)
        median = jnp.where(
            count <= 2 * n,
            _median_of_first(weight, RESTARTS_LARGE),
            _median_of_first(weight, int(restarts)),
        )
        return jnp.log(median)  # [reruns]

    ns = jnp.asarray(n_sizes, jnp.int32)
    logs = lax.map(log_weight, (jnp.arange(len(n_sizes), dtype=jnp.int32), ns))
    m = jnp.mean(slope(jnp.log(ns.astype(jnp.float32)), logs.T))
    return jnp.where(m < 1.0, alpha / (1.0 - m), jnp.nan)


def phd_of_clouds(x, valid, **options):
    """[C] PHD of clouds x [C, N, D], valid [C, N], one cloud at a time (memory:
    reruns x draws dense [n, n] distances of the largest size)."""
    return lax.map(lambda a: phd_of_cloud(a[0], a[1], **options), (x, valid))


@functools.partial(jax.jit, static_argnames=("n_sizes", "alpha", "restarts", "reruns", "seed"))
def _phd(x, valid, *, n_sizes, alpha, restarts, reruns, seed):
    xf, vf, batch = validation.flat_clouds(x, valid)
    out = phd_of_clouds(
        xf,
        vf,
        n_sizes=n_sizes,
        alpha=alpha,
        restarts=restarts,
        reruns=reruns,
        seed=seed,
    )
    return out.reshape(batch).astype(jnp.float32)


def phd_id(
    x,
    mask=None,
    *,
    min_points=MIN_POINTS,
    max_points=MAX_POINTS,
    step=STEP,
    alpha=ALPHA,
    restarts=RESTARTS,
    reruns=RERUNS,
    seed=0,
):
    """Persistent-homology dimension of each cloud (see the module docstring).

    Args:
      x: [..., N, D] float points.
      mask: optional bool [..., N] of valid points; every cloud needs at least the
        largest subsample size of valid points.
      min_points: smallest subsample size, >= 2.
      max_points: the sizes are range(min_points, max_points, step) (max_points
        excluded), at least two of them, the largest <= N.
      step: step between sizes, >= 1.
      alpha: the edge-length power, > 0 (below the intrinsic dimension, as the
        authors advise).
      restarts: subsets per size (their median is used), >= 1; RESTARTS_LARGE at sizes
        above half the valid points.
      reruns: independent repetitions whose slopes are averaged, >= 1.
      seed: seed of the subsets, >= 0.

    Returns:
      float32 [...].

    Reference: Tulchinskii et al. 2023 (NeurIPS, arXiv:2306.04723); their code,
    github.com/ArGintum/GPTID ``IntrinsicDim.py`` ``PHD().fit_transform``.
    """
    n_sizes = check_options(min_points, max_points, step, alpha, restarts, reruns, seed)
    x = validation.as_points(x, "x")
    if n_sizes[-1] > x.shape[-2]:
        raise ArgumentError(
            "{max_points}={value} gives subsets of up to {size} points, but clouds have N = {n}",
            "max_points",
            value=max_points,
            size=n_sizes[-1],
            n=x.shape[-2],
        )
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask, min_valid=n_sizes[-1])
    valid = jnp.ones(x.shape[:-1], bool) if mask is None else mask
    return _phd(
        x,
        valid,
        n_sizes=n_sizes,
        alpha=float(alpha),
        restarts=int(restarts),
        reruns=int(reruns),
        seed=int(seed),
    )
