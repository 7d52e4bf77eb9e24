"""Representational similarity analysis (RSA) of two representations of the same points.

Kriegeskorte, Mur and Bandettini 2008 (Front. Syst. Neurosci. 2:4,
doi:10.3389/neuro.06.004.2008): each representation gives a representational
dissimilarity matrix (RDM) between its points; the score is the correlation of the
two RDMs' upper triangles. As rsatoolbox 0.3.2 defines them,

* rdm "correlation": 1 - the Pearson correlation between two points' patterns (each
  point centred over its features and scaled to unit norm: ``calc_rdm_correlation``);
* rdm "euclidean": the squared Euclidean distance divided by the number of features
  (``calc_rdm_euclidean``: |x_i - x_j|^2 / D, squared and per feature);
  computed from the Gram matrix of the points shifted by a coarse mean
  (`grid_centred`), accurate whatever their offset and exact for points on a grid
  (integers, {0, 1}), whose equal distances then tie as they do in float64;
* method "spearman": the Pearson correlation of the entries' average ranks (ties
  share the mean of their ranks, as ``scipy.stats.rankdata``:
  ``compare(method="spearman")``); "pearson": of the entries themselves
  (``compare(method="corr")``).

Only valid points take part. When more than ``max_points`` points are valid, a
seeded subsample of ``max_points`` of them is used (`subsample`): the valid points
with the smallest hash h(i) = fmix32(i xor fmix32(seed)) (MurmurHash3's 32-bit
finaliser, a bijection of the point index, so there are no ties), in index order.
It depends only on the mask, N, max_points and seed: the same points for both sides
and every layer, and a NumPy transcription reproduces it (the reference fixture).

Per layer (`layer_stats`) the RDM vector of the P = min(N, max_points) selected
points is computed once (a P x P Gram matrix of the points, its M = P (P - 1) / 2
upper-triangle entries) and standardised: ranked (Spearman) or taken as is
(Pearson), centred on the mean of its valid entries and scaled to unit norm, zero at
entries with an invalid point. A pair's score is then the inner product of two
such vectors, so all La x Lb pairs are one product [La, M] x [M, Lb] (`pair_scores`),
summed in ~sqrt(M) chunks of ~sqrt(M) entries (float32 rounding grows with about
2 sqrt(M) additions in sequence rather than M). Duplicate points have exactly equal
rows of the Gram matrix, so their dissimilarities to every other point tie exactly
and their own is exactly 0 ((g_ii + g_jj) / 2 - g_ij).

Ranks in float32: twice the centred average rank, 2 r - (m + 1) = first + last + 1 - m
for a tie group at sorted positions first..last of the m valid entries, is an
integer, exact while m < 2^24 (max_points <= 5,793); beyond that it is rounded to
float32 (a relative 6e-8).

Memory (float32, P = max_points = 5,000, M = 12.5 million entries): 50 MB stored per
layer (the standardised vector); while a layer is computed (one at a time), the
P x P Gram matrix (100 MB), the two upper-triangle index vectors (100 MB, shared by
the layers) and the ranking (sort keys and positions, sorted copies, tie bounds,
the scatter back: ~350 MB), about 0.5 GB; a permutation (`permute`) holds ~7 index
vectors of M int32 (350 MB) and the gathered vectors (50 MB per layer). FLOPs:
2 P^2 D per layer for the Gram matrix plus a sort of M entries (~M log2 M = 3e8
comparisons); 2 M per pair (a memory-bound pass over the two stored vectors). At
33 x 33 layers of D = 4,096: 6.8e12 per stack for the Gram matrices, 2.7e10 for the
1,089 pairs, which read the 3.3 GB of stored vectors of both stacks.

Permutation null (`permute`): the rows of y reordered by a permutation of the valid
points. The subsample is a function of the mask, so the permuted points' subsample
holds the same positions; y's points at them, y[perm[S]], are in general not all in
y's own subsample S. The null used here permutes within the subsample: the
permutation induced on S (subsample position a goes to the rank of perm[S[a]] among
perm[S]; a uniform random permutation of S when perm is uniform) relabels the stored
vector, a gather (a permutation of the points maps upper-triangle entries to
upper-triangle entries and carries their ranks with them, so nothing is re-ranked).
When the valid points are no more than max_points this is exactly the statistics of
the permuted points; beyond, it is the statistics of y's own subsample permuted,
which is what the null needs (x's subsample paired at random with y's) and costs a
gather of M entries per layer instead of a new RDM and sort.
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.errors import ArgumentError
from geom_jax.metrics.declare.observable import Option
from geom_jax.metrics.neighbours.duplicates import fmix32
from geom_jax.metrics.similarity import cka_hsic, measure

HIGHEST = lax.Precision.HIGHEST
METHODS = ("spearman", "pearson")
RDMS = ("correlation", "euclidean")
MAX_POINTS_LIMIT = 65536
"""Largest max_points: M = P (P - 1) / 2 entries must fit int32 (and take 8.6 GB)."""


def _check_max_points(v):
    if not 3 <= v <= MAX_POINTS_LIMIT:
        raise ArgumentError(
            "{max_points} must be an integer in [3, {hi}], got {v!r}",
            "max_points",
            hi=MAX_POINTS_LIMIT,
            v=v,
        )


def _check_seed(name):
    def check(v):
        if not 0 <= v < 2**32:
            raise ArgumentError(
                "{" + name + "} must be an integer in [0, 2^32), got {v!r}", name, v=v
            )

    return check


METHOD = Option(
    "method",
    str,
    "spearman",
    "RSA: correlation of the two RDM vectors, spearman (average ranks for ties) or pearson.",
    choices=METHODS,
)
RDM = Option(
    "rdm",
    str,
    "correlation",
    "RSA: dissimilarity of two points, correlation (1 - Pearson r of their patterns) or "
    "euclidean (squared distance / number of features, as rsatoolbox).",
    choices=RDMS,
)
MAX_POINTS = Option(
    "max_points",
    int,
    5000,
    "RSA: at most this many valid points (a seeded subsample, the same for both sides and "
    "every layer); P (P - 1) / 2 RDM entries, 50 MB per layer at 5,000.",
    check=_check_max_points,
)
SEED = Option(
    "seed",
    int,
    0,
    "RSA: the seed of the subsample of max_points valid points.",
    check=_check_seed("seed"),
)


def subsample(valid, max_points, seed):
    """int32 [P], P = min(N, max_points): the points an RSA uses, in index order.

    All N points when N <= max_points; otherwise the valid points with the smallest
    fmix32(i xor fmix32(seed)), then (when fewer than max_points are valid) invalid
    points to fill P, which take no part (their entries are masked).

    Args:
      valid: bool [N].
      max_points, seed: the options.
    """
    n = valid.shape[-1]
    if n <= max_points:
        return jnp.arange(n, dtype=jnp.int32)
    index = jnp.arange(n, dtype=jnp.uint32)
    prio = fmix32(index ^ fmix32(jnp.uint32(seed)))
    _, _, order = lax.sort(((~valid).astype(jnp.uint32), prio, index.astype(jnp.int32)), num_keys=2)
    return jnp.sort(order[:max_points])


def _triangle(p):
    """(i, j) int32 [M]: the upper-triangle entries (i < j, row by row) of a P x P
    matrix, and the row starts (int32 [P], NumPy) of the flattened triangle."""
    rows = np.arange(p, dtype=np.int64)
    starts = (rows * (2 * p - rows - 1) // 2).astype(np.int32)
    k = jnp.arange(p * (p - 1) // 2, dtype=jnp.int32)
    i = (jnp.searchsorted(jnp.asarray(starts), k, side="right") - 1).astype(jnp.int32)
    j = k - jnp.asarray(starts)[i] + i + 1
    return i, j, starts


def _chunks(m):
    """(C, K): the M entries are held as C chunks of K (C K >= M, both ~sqrt(M))."""
    k = max(1, int(np.ceil(np.sqrt(m))))
    return -(-m // k), k


def _sum(v):
    """Sum of v [C, K] in two levels (float32 error ~ sqrt(C) + sqrt(K) roundings)."""
    return jnp.sum(jnp.sum(v, axis=-1), axis=-1)


def grid_centred(p, sv):
    """p [P, D] (zero rows where sv is False) minus, per feature, the mean of its valid
    points rounded to a multiple of the largest power of two not above their standard
    deviation: a shift by at most half a standard deviation from the centre, so float32
    distances from the Gram matrix stay accurate whatever the offset, and points on a
    grid (integers, {0, 1}, any coarse quantisation) stay on it exactly, so distances
    that are equal in exact arithmetic stay equal (Spearman's ties)."""
    w = sv[:, None]
    count = jnp.maximum(jnp.sum(sv), 1).astype(p.dtype)
    mean = jnp.sum(p, axis=0) / count
    dev = jnp.where(w, p - mean, 0.0)
    std = jnp.sqrt(jnp.sum(dev * dev, axis=0) / count)
    _, e = jnp.frexp(std)
    grid = jnp.ldexp(jnp.ones_like(std), e - 1)
    c = jnp.where(std > 0, jnp.round(mean / grid) * grid, mean)
    return jnp.where(w, p - c, 0.0)


def _rdm_vector(p, sv, i, j, rdm):
    """RDM upper triangle [M] of the points p [P, D] (rows with sv False ignored; their
    entries are garbage-free but meaningless). NaN where a valid point has a constant
    pattern under rdm "correlation"."""
    d = p.shape[-1]
    p = jnp.where(sv[:, None], p, 0.0)
    if rdm == "correlation":
        for _ in range(2):
            p = p - jnp.mean(p, axis=-1, keepdims=True)
        big = jnp.max(jnp.abs(p), axis=-1, keepdims=True)
        z = p / jnp.where(big > 0, big, 1.0)
        norm = jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True))
        flat = sv[:, None] & (big == 0)
        p = jnp.where(flat, jnp.nan, z / jnp.where(big > 0, norm, 1.0))
    else:
        p = grid_centred(p, sv)
    g = jnp.einsum("id,jd->ij", p, p, precision=HIGHEST)
    g = 0.5 * (g + g.T)
    r = jnp.diagonal(g)
    # r_i + r_j - 2 g_ij: exactly 0 for duplicate points (their rows of g are equal).
    dist = r[i] + r[j] - 2.0 * g[i, j]
    return dist / d if rdm == "euclidean" else 0.5 * dist


def centred_ranks(d, e):
    """Twice the centred average rank of each entry of d [M] among those with e [M]
    True, as int32 (ties: the mean of their ranks, as scipy.stats.rankdata); 0 where e
    is False. A tie group at sorted positions first..last of m valid entries has
    average rank (first + last) / 2 + 1, so 2 r - (m + 1) = first + last + 1 - m."""
    m = d.shape[0]
    pos = jnp.arange(m, dtype=jnp.int32)
    key, order = lax.sort((jnp.where(e, d, jnp.inf), pos), num_keys=1)
    change = key[1:] != key[:-1]
    yes = jnp.ones((1,), bool)
    first = lax.cummax(jnp.where(jnp.concatenate([yes, change]), pos, 0))
    last = lax.cummin(jnp.where(jnp.concatenate([change, yes]), pos, m - 1), reverse=True)
    c = first + last + 1 - jnp.sum(e, dtype=jnp.int32)
    return jnp.where(e, jnp.zeros_like(pos).at[order].set(c), 0)


def standardised(d, e, method):
    """The RDM vector d [M] (valid entries e [M]) ranked (spearman) or not, centred on
    its valid entries' mean and scaled to unit norm, 0 at invalid entries, as
    [C, K] chunks (zero padding). All NaN when a valid entry is NaN."""
    m = d.shape[0]
    c_, k_ = _chunks(m)
    bad = jnp.any(e & jnp.isnan(d))
    if method == "spearman":
        v = centred_ranks(d, e).astype(jnp.float32)
    else:
        count = jnp.maximum(jnp.sum(e), 1).astype(jnp.float32)
        v = jnp.where(e, d, 0.0)
        for _ in range(2):
            mean = _sum(jnp.pad(v, (0, c_ * k_ - m)).reshape(c_, k_)) / count
            v = jnp.where(e, v - mean, 0.0)
    v = jnp.pad(v, (0, c_ * k_ - m)).reshape(c_, k_)
    v = v / jnp.sqrt(_sum(v * v))
    return jnp.where(bad, jnp.nan, v)


def layer_stats(x, valid, *, method, rdm, max_points, seed):
    """Per layer of x [L, N, D]: the standardised RDM vector of the subsample, float32
    [L, C, K] (C K >= M = P (P - 1) / 2, zero padded)."""
    s = subsample(valid, max_points, seed)
    sv = valid[s]
    i, j, _ = _triangle(s.shape[0])
    e = sv[i] & sv[j]

    def one(p):
        return standardised(_rdm_vector(p, sv, i, j, rdm), e, method)

    return lax.map(one, jnp.take(x, s, axis=1))


def pair_scores(stats_a, stats_b, valid, **options):
    """RSA [La, Lb]: inner products of the standardised vectors, summed per chunk and
    then over chunks (stats_b None: stack a against itself, exactly symmetric)."""
    vb = stats_a if stats_b is None else stats_b
    part = jnp.einsum("ack,bck->abc", stats_a, vb, precision=HIGHEST)
    s = jnp.sum(part, axis=-1)
    return cka_hsic.symmetric(s) if stats_b is None else s


def permute(stats, perm, valid, *, method, rdm, max_points, seed):
    """The stored vectors [L, C, K] relabelled by the permutation perm [N] induced on
    the subsample (module docstring): entry (a, b) of the result is entry
    (pi(a), pi(b)) of the stored one, pi(a) the rank of perm[S[a]] among perm[S]."""
    s = subsample(valid, max_points, seed)
    pi = jnp.argsort(jnp.argsort(perm[s])).astype(jnp.int32)
    i, j, starts = _triangle(s.shape[0])
    a, b = pi[i], pi[j]
    lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
    src = jnp.asarray(starts)[lo] + (hi - lo - 1)
    n_layers, c_, k_ = stats.shape
    src = jnp.concatenate([src, jnp.arange(src.shape[0], c_ * k_, dtype=jnp.int32)])
    return jnp.take(stats.reshape(n_layers, c_ * k_), src, axis=1).reshape(stats.shape)


RSA = measure.SimilarityMeasure(
    name="rsa",
    doc="Representational similarity analysis: the Spearman (or Pearson) correlation of "
    "the two representations' dissimilarity matrices.",
    reference="Kriegeskorte, Mur, Bandettini 2008, Front. Syst. Neurosci. 2:4, "
    "doi:10.3389/neuro.06.004.2008; checked against rsatoolbox 0.3.2 (calc_rdm, compare)",
    layer_stats=layer_stats,
    pair_scores=pair_scores,
    options=(METHOD, RDM, MAX_POINTS, SEED),
    permute=permute,
    similarity=True,
    best=1.0,
    min_points=lambda options: (3, "rsa needs"),
)


def rsa(
    x,
    y,
    mask=None,
    *,
    method=METHOD.default,
    rdm=RDM.default,
    max_points=MAX_POINTS.default,
    seed=SEED.default,
):
    """Representational similarity analysis of x [..., N, Dx] and y [..., N, Dy].

    The correlation (Spearman by default) between the upper triangles of the two
    representational dissimilarity matrices over the valid points (a seeded
    subsample of max_points of them when there are more; `subsample` says which).

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points.
      mask: bool [..., N] valid points (None: all; at least 3).
      method: "spearman" (average ranks for ties, rsatoolbox ``compare(method=
        "spearman")``) or "pearson" (``compare(method="corr")``).
      rdm: "correlation" (1 - Pearson r between two points' patterns) or
        "euclidean" (squared Euclidean distance / number of features), as
        rsatoolbox's ``calc_rdm``.
      max_points: at most this many valid points take part (3 to 65,536; P (P - 1) / 2
        entries, 50 MB per layer at 5,000).
      seed: chooses the subsample (0 <= seed < 2^32); unused when N <= max_points.

    Returns:
      float32 [...] in [-1, 1]; 1 for y = x. NaN when a dissimilarity matrix is
      constant or (rdm "correlation") a valid point's pattern is constant.

    Example:
      >>> z = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
      >>> round(float(rsa(z, np.tanh(z))), 3)
      0.951

    Reference: Kriegeskorte, Mur, Bandettini 2008, Representational similarity
    analysis - connecting the branches of systems neuroscience, Front. Syst.
    Neurosci. 2:4, doi:10.3389/neuro.06.004.2008 (no arXiv id). Checked against
    rsatoolbox 0.3.2 (``calc_rdm(method="correlation" | "euclidean")``,
    ``compare(method="spearman" | "corr")``) in float64. Unlike rsatoolbox, a NaN
    dissimilarity makes the score NaN instead of dropping the entry.
    """
    return measure.evaluate(
        RSA.name, x, y, mask, method=method, rdm=rdm, max_points=max_points, seed=seed
    )
