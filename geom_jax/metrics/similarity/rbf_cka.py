"""CKA with Gaussian (RBF) kernels, every pair of layers from blocks of the kernels.

platonic-rep's ``AlignmentMetrics.cka(kernel_metric="rbf", rbf_sigma=sigma)`` (Huh et
al. 2024, arXiv 2405.07987; RBF CKA: Kornblith et al. 2019, ICML, arXiv 1905.00414):
on the L2-normalised features u_i (platonic-rep's ``compute_score`` normalises before
every metric), K_ij = exp(-|u_i - u_j|^2 / (2 sigma^2)), sigma absolute (default 1.0,
its ``rbf_sigma``; for unit rows |u_i - u_j|^2 is in [0, 4]), and

  CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

with HSIC biased, tr(K H L H) (H = I - 11^T / m; no 1 / (m - 1)^2, which cancels), or
unbiased, Song et al. 2012, JMLR 13, eq. 5, over the m valid points.

Both estimators are unchanged when K_ij becomes K_ij + a_i + a_j + c (off the diagonal
for the unbiased one, which never reads the diagonal and is homogeneous in K), so both
are computed from the double-centred Kc = H K' H, Kc_ij = K'_ij - mu_i - mu_j + mu (mu_i
the row means of K' over the valid points), with K' the kernel less its value c at the
mean squared distance, K' = c expm1(-|u_i - u_j|^2 / (2 sigma^2) - log c) (and, for the
unbiased estimator, divided by the largest kernel value between two points, its
diagonal 0). float32 then resolves the kernel's spread where K itself (near 1 for
points close against sigma, spanning orders of magnitude for sigma small) and the
uncentred sums lose it to cancellation, underflow or overflow. With
S_ab = sum_ij Kc_a,ij Kc_b,ij and d = diag(Kc):

* biased: HSIC = S_ab;
* unbiased: tr(K~ L~) = S_ab - d_a . d_b, 1^T K~ 1 = -sum d_a (Kc's rows sum to 0),
  1^T K~ L~ 1 = d_a . d_b, in eq. 5, with d = mean(mu) - 2 mu (K'_ii = 0).

|u_i - u_j|^2 comes from the inner products of the unit rows after centring them on
their mean (distances do not change; without it, rows sharing a direction, as LLM
hidden states do, lose the small distances to cancellation in |u_i|^2 + |u_j|^2 -
2 u_i . u_j).

Cost: per layer, the row means from one pass over the upper-triangle R x R blocks of
its kernel (N^2 D / 2 multiply-adds and N^2 / 2 exponentials; unbiased: one more pass
for the smallest distance), kept in ``layer_stats``; per pair, one more pass over the
blocks, every layer's centred block computed once per block and shared by all pairs
(N^2 D / 2 per layer and N^2 / 2 per pair). Never more than one block of every layer's
kernel (KERNEL_BLOCK_BYTES) is held. A permutation of the points permutes the
statistics (row means included): no pass.
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.errors import ArgumentError
from geom_jax.metrics.declare.observable import Option
from geom_jax.metrics.neighbours import distances
from geom_jax.metrics.similarity import cka_hsic, knn_alignment, measure

KERNEL_BLOCK_BYTES = cka_hsic.KERNEL_BLOCK_BYTES
"""Bytes of one R x R block of every layer's kernel (both stacks)."""

HIGHEST = distances.HIGHEST


def _rows(b, rows, n, valid):
    """Start of block b (the last one shifted back to fit) and which of its rows are
    valid and not held by an earlier block."""
    start = jnp.minimum(b * rows, n - rows)
    ids = start + jnp.arange(rows)
    return start, ids, (ids >= b * rows) & jnp.take(valid, ids)


SWITCH = 40.0
"""Log-kernel excess over the mean level above which K' is computed as exp(a - s) - c
(no cancellation there) instead of c expm1(a - b)."""


def _sq_distances(u, r, part_i, part_j):
    """|u_i - u_j|^2 [L, R, R] between two row blocks (start, ids, keep) of the centred
    unit rows u [L, N, D] (r [L, N] their squared norms), from the inner products; 0 for
    a point with itself. Also keep [R, R] (both points kept) and eye [R, R] (the same
    point)."""
    (si, ii, keep_i), (sj, ij, keep_j) = part_i, part_j
    rows = ii.shape[0]
    ui = lax.dynamic_slice_in_dim(u, si, rows, axis=1)
    uj = lax.dynamic_slice_in_dim(u, sj, rows, axis=1)
    ri = lax.dynamic_slice_in_dim(r, si, rows, axis=1)
    rj = lax.dynamic_slice_in_dim(r, sj, rows, axis=1)
    g = jnp.einsum("lrd,lsd->lrs", ui, uj, precision=HIGHEST)
    eye = ii[:, None] == ij[None, :]
    d2 = jnp.where(eye, 0.0, jnp.maximum(ri[:, :, None] + rj[:, None, :] - 2.0 * g, 0.0))
    return d2, keep_i[:, None] & keep_j[None, :], eye


def _kernel_block(u, r, levels, part_i, part_j, sigma, debiased):
    """K' [L, R, R] between two row blocks, zero outside the kept rows and columns.

    With a = -|u_i - u_j|^2 / (2 sigma^2) and per layer the levels (b, s), c = exp(b - s):
    K' = exp(a - s) - c off the diagonal, computed as c expm1(a - b) up to a - b = SWITCH;
    on it 1 - c (biased, s = 0: K_ii = 1) or 0 (unbiased: eq. 5 never reads it)."""
    d2, keep, eye = _sq_distances(u, r, part_i, part_j)
    b, s = levels[:, 0, None, None], levels[:, 1, None, None]
    a = -d2 / (2.0 * sigma * sigma)
    c = jnp.exp(b - s)
    near = c * jnp.expm1(jnp.minimum(a - b, SWITCH))
    k = jnp.where(a - b > SWITCH, jnp.exp(a - s) - c, near)
    k = jnp.where(eye, 0.0 if debiased else 1.0 - c, k)
    return jnp.where(keep, k, 0.0)


def _units(x, valid):
    """The unit rows, centred on their mean over the valid points (|u_i - u_j| is
    unchanged, and the Gram trick no longer cancels where the rows share a direction),
    zero at invalid points, and their squared norms."""
    u, _ = knn_alignment.normalised(x, jnp.broadcast_to(valid, x.shape[:2]))
    v = cka_hsic.centred(u, valid)
    return v, jnp.einsum("lnd,lnd->ln", v, v, precision=HIGHEST)


def _over_blocks(n, layers, valid, body, init):
    """fori_loop of body(i, j, part_i, part_j, rows, acc) over the upper-triangle block
    pairs (I, J >= I) of rows sized for `layers` layers."""
    rows = cka_hsic.block_size(n, layers)
    pairs = jnp.asarray(cka_hsic.block_pairs(n, rows))

    def step(p, acc):
        i, j = pairs[p, 0], pairs[p, 1]
        return body(i, j, _rows(i, rows, n, valid), _rows(j, rows, n, valid), rows, acc)

    return lax.fori_loop(0, pairs.shape[0], step, init)


def _levels(u, r, valid, sigma, debiased):
    """(b, s) [L, 2] per layer: b = -mean_ij |u_i - u_j|^2 / (2 sigma^2) = -mean_i r_i /
    sigma^2 (centred rows), the log kernel at the mean squared distance; s the log of the
    scale the kernel is divided by: 0 (biased: K_ii = 1 fixes the scale) or, unbiased
    (eq. 5 is homogeneous, the ratio scale-free), the largest log kernel between two
    valid points, -min |u_i - u_j|^2 / (2 sigma^2), so that no entry overflows."""
    b = -jnp.sum(r, axis=1) / (jnp.sum(valid).astype(r.dtype) * sigma * sigma)
    if not debiased:
        return jnp.stack([b, jnp.zeros_like(b)], axis=1)

    def body(i, j, part_i, part_j, rows, low):
        d2, keep, eye = _sq_distances(u, r, part_i, part_j)
        return jnp.minimum(low, jnp.min(jnp.where(keep & ~eye, d2, jnp.inf), axis=(1, 2)))

    low = _over_blocks(u.shape[1], u.shape[0], valid, body, jnp.full(b.shape, jnp.inf))
    return jnp.stack([b, -low / (2.0 * sigma * sigma)], axis=1)


def _row_means(u, r, levels, valid, sigma, debiased):
    """mu [L, N]: row means of each layer's K' over the valid points (0 elsewhere), from
    the upper-triangle blocks (an off-diagonal block adds to both its rows and columns)."""

    def body(i, j, part_i, part_j, rows, acc):
        k = _kernel_block(u, r, levels, part_i, part_j, sigma, debiased)
        add = lambda a, start, v: lax.dynamic_update_slice_in_dim(
            a, lax.dynamic_slice_in_dim(a, start, rows, axis=1) + v, start, axis=1
        )
        acc = add(acc, part_i[0], jnp.sum(k, axis=2))
        return add(acc, part_j[0], jnp.where(i == j, 0.0, jnp.sum(k, axis=1)))

    total = _over_blocks(u.shape[1], u.shape[0], valid, body, jnp.zeros(u.shape[:2], u.dtype))
    return total / jnp.sum(valid).astype(u.dtype)


def _stats(x, valid, *, sigma, debiased):
    """(centred unit rows u [L, N, D], their squared norms r [L, N], row means of K'
    mu [L, N], levels (b, s) [L, 2])."""
    u, r = _units(x, valid)
    levels = _levels(u, r, valid, sigma, debiased)
    return u, r, _row_means(u, r, levels, valid, sigma, debiased), levels


def _permute(stats, perm, valid, **options):
    """The statistics of the points reordered as points[:, perm] (row means included)."""
    u, r, mu, levels = stats
    return (*(cka_hsic.permute_rows(a, perm) for a in (u, r, mu)), levels)


def _centred_sums(stats_a, stats_b, valid, sigma, debiased):
    """(S [La, Lb], S_aa [La], S_bb [Lb]) = sums of Kc_a * Kc_b over all N x N entries, from
    the upper-triangle blocks, off-diagonal ones counted twice. stats_b None: stack a
    against itself (S exactly symmetric)."""
    same = stats_b is None
    m = jnp.sum(valid).astype(jnp.float32)

    def centred(stats, part_i, part_j, rows):
        u, r, mu, levels = stats
        k = _kernel_block(u, r, levels, part_i, part_j, sigma, debiased)
        bar = jnp.sum(mu, axis=1) / m
        mi = lax.dynamic_slice_in_dim(mu, part_i[0], rows, axis=1)
        mj = lax.dynamic_slice_in_dim(mu, part_j[0], rows, axis=1)
        kc = k - mi[:, :, None] - mj[:, None, :] + bar[:, None, None]
        return jnp.where((part_i[2][:, None] & part_j[2][None, :])[None], kc, 0.0)

    def body(i, j, part_i, part_j, rows, acc):
        w = jnp.where(i == j, 1.0, 2.0)
        ka = centred(stats_a, part_i, part_j, rows)
        if same:
            return (acc[0] + w * jnp.einsum("ars,brs->ab", ka, ka, precision=HIGHEST),)
        kb = centred(stats_b, part_i, part_j, rows)
        return (
            acc[0] + w * jnp.einsum("ars,brs->ab", ka, kb, precision=HIGHEST),
            acc[1] + w * jnp.einsum("ars,ars->a", ka, ka, precision=HIGHEST),
            acc[2] + w * jnp.einsum("brs,brs->b", kb, kb, precision=HIGHEST),
        )

    n, la = stats_a[0].shape[1], stats_a[0].shape[0]
    if same:
        init = (jnp.zeros((la, la), jnp.float32),)
        (s,) = _over_blocks(n, la, valid, body, init)
        s = cka_hsic.symmetric(s)
        return s, jnp.diagonal(s), jnp.diagonal(s)
    lb = stats_b[0].shape[0]
    init = tuple(jnp.zeros(shape, jnp.float32) for shape in ((la, lb), (la,), (lb,)))
    return _over_blocks(n, la + lb, valid, body, init)


def _diagonal(stats, valid):
    """diag(Kc) [L, N] of the unbiased kernels (K'_ii = 0): mean(mu) - 2 mu_i at valid
    points, 0 elsewhere."""
    mu = stats[2]
    bar = jnp.sum(mu, axis=1, keepdims=True) / jnp.sum(valid).astype(mu.dtype)
    return jnp.where(valid, bar - 2.0 * mu, 0.0)


def _unbiased(s, dd, ta, tb, m):
    """Song et al. eq. 5 of the centred kernels from S, d_a . d_b, sum d_a, sum d_b."""
    num = s - dd + ta * tb / ((m - 1.0) * (m - 2.0)) - 2.0 * dd / (m - 2.0)
    return num / (m * (m - 3.0))


def _scores(stats_a, stats_b, valid, *, sigma, debiased):
    s, s_a, s_b = _centred_sums(stats_a, stats_b, valid, sigma, debiased)
    if not debiased:
        return s / jnp.sqrt(s_a[:, None] * s_b[None, :])
    m = jnp.sum(valid).astype(jnp.float32)
    da = _diagonal(stats_a, valid)
    db = da if stats_b is None else _diagonal(stats_b, valid)
    dd = jnp.einsum("an,bn->ab", da, db, precision=HIGHEST)
    if stats_b is None:
        dd = cka_hsic.symmetric(dd)
    ta, tb = jnp.sum(da, axis=1), jnp.sum(db, axis=1)
    h = _unbiased(s, dd, ta[:, None], tb[None, :], m)
    h_a = _unbiased(s_a, jnp.sum(da * da, axis=1), ta, ta, m)
    h_b = _unbiased(s_b, jnp.sum(db * db, axis=1), tb, tb, m)
    return h / jnp.sqrt(h_a[:, None] * h_b[None, :])


def _check_sigma(sigma):
    if not sigma > 0 or not np.isfinite(sigma):
        raise ArgumentError("{sigma} must be a finite number > 0, got {v!r}", "sigma", v=sigma)


def _points(options):
    if options["debiased"]:
        return 4, "the unbiased HSIC (debiased=True) needs"
    return 2, "cka_rbf needs"


SIGMA = Option(
    "sigma",
    float,
    1.0,
    "Bandwidth of cka_rbf's kernel exp(-|u_i - u_j|^2 / (2 sigma^2)) on the unit rows "
    "(platonic-rep's rbf_sigma and its default).",
    check=_check_sigma,
)

DEBIASED = Option(
    "debiased",
    bool,
    False,
    "cka_rbf with the unbiased HSIC (Song et al. 2012, eq. 5) instead of the biased one.",
)

CKA_RBF = measure.SimilarityMeasure(
    name="cka_rbf",
    doc="CKA of RBF kernels of the unit rows, biased or unbiased HSIC.",
    reference=(
        "Kornblith et al. 2019, ICML, arXiv 1905.00414 (RBF CKA); Huh et al. 2024, arXiv "
        "2405.07987; checked against platonic-rep metrics.py AlignmentMetrics.cka("
        "kernel_metric='rbf') on L2-normalised features, without its 1e-6 "
        "(tests/fixtures/platonic_reference.npz); Song et al. 2012, JMLR 13, eq. 5"
    ),
    layer_stats=_stats,
    pair_scores=_scores,
    options=(SIGMA, DEBIASED),
    permute=_permute,
    similarity=True,
    best=1.0,
    min_points=_points,
)


def cka_rbf(x, y, mask=None, *, sigma=SIGMA.default, debiased=DEBIASED.default):
    """CKA with RBF kernels of x [..., N, Dx] and y [..., N, Dy].

    On the L2-normalised rows u (a zero vector stays zero, as torch's F.normalize),
    K_ij = exp(-|u_i - u_j|^2 / (2 sigma^2)) and likewise L from y;
    HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) over the m valid points, HSIC biased
    (tr(K H L H)) or, when debiased, unbiased (Song et al. 2012, JMLR 13, eq. 5).

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points.
      mask: bool [..., N] valid points (None: all).
      sigma: the kernel's bandwidth (> 0), absolute, on unit rows (distances in [0, 2]).
      debiased: the unbiased HSIC instead of the biased one (needs m >= 4).

    Returns:
      float32 [...]; 1 for identical inputs; NaN where an HSIC is 0 (all valid points
      of x or y in one direction). For sigma far below the typical distance the biased
      kernels are the identity to float32 precision (CKA 1, as in float64); the
      unbiased estimator, which ignores the diagonal, still resolves them (checked
      down to sigma = 0.1, and against float64 to 0.05).

    Example:
      >>> s = cka_rbf(x, y, sigma=1.0)

    Reference: Kornblith et al. 2019, Similarity of Neural Network Representations
    Revisited, ICML, arXiv 1905.00414; platonic-rep ``AlignmentMetrics.cka(
    kernel_metric="rbf", rbf_sigma=sigma, unbiased=debiased)`` (Huh et al. 2024, arXiv
    2405.07987) on the normalised features, as its ``compute_score`` gives them.
    Deliberate difference: no 1e-6 is added to the denominator (platonic-rep's value is
    HSIC_kl / (sqrt(HSIC_kk HSIC_ll) + 1e-6); as for the linear `cka`).
    """
    return measure.evaluate("cka_rbf", x, y, mask, sigma=sigma, debiased=debiased)
