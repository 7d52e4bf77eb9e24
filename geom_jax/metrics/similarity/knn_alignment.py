"""Mutual k-NN alignment and CKNNA from sparse neighbour lists, for many layer pairs.

Both measures of Huh et al. 2024 (The Platonic Representation Hypothesis, ICML,
arXiv 2405.07987; its code, minyoungg/platonic-rep ``metrics.py``) compare the
k nearest neighbours N_k(i) of each point i in two representations, by inner
product of the L2-normalised features (the point itself excluded):

* mutual k-NN: mean over points of |N_k^x(i) ∩ N_k^y(i)| / k;
* CKNNA: the unbiased HSIC (Song et al. 2012, JMLR 13, eq. 5) of the kernels
  K = X X^T, L = Y Y^T restricted to the directed pairs (i, j) with j in both
  lists of i, normalised as HSIC(K∘M, L∘M) / (sqrt(HSIC(K∘M_x, K∘M_x)
  HSIC(L∘M_y, L∘M_y)) + 1e-6), M = M_x ∘ M_y the intersection of the 0/1 k-NN
  masks.

No N x N matrix is formed: per layer, the exact lists idx [N, k], the kernel
values at the listed pairs (gathered dot products) and whether each listed pair
is reciprocated; per pair of layers, the k x k match table of each point's two
lists. With A = K∘M and B = L∘M (zero diagonals, A not symmetric), eq. 5 needs

* tr(A B) = sum_ij A_ij B_ji: the listed pairs (i, j) of M whose reverse (j, i)
  is in M too, i.e. reciprocated in both lists (j is in both lists of i, and i in
  both lists of j);
* 1^T A 1, 1^T B 1: sums over the pairs of M;
* 1^T A B 1 = sum_l colsum_A[l] rowsum_B[l] = sum over the pairs (i, l) of M of
  A_il rowsum_B[l], a gather of B's row sums at the listed columns.
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.errors import ArgumentError
from geom_jax.metrics.declare.observable import Option
from geom_jax.metrics.neighbours import neighbour_lists
from geom_jax.metrics.neighbours.host_selection import SELECTION_METHODS
from geom_jax.metrics.similarity.measure import SimilarityMeasure

CKNNA_EPS = 1e-6
"""Added to the CKNNA denominator, as platonic-rep's ``cknna`` does."""


def normalised(x, valid):
    """Rows of x [C, N, D] divided by their L2 norm (after a division by their
    largest |coordinate|, against overflow); zero at invalid points and zero
    vectors. Returns (x_hat, zero [C]: a valid point has the zero vector)."""
    big = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    z = x / jnp.where(big > 0, big, 1.0)
    norm = jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True))
    ok = valid[..., None] & (big > 0)
    x_hat = jnp.where(ok, z / jnp.where(big > 0, norm, 1.0), 0.0)
    return x_hat, jnp.any(valid & (big[..., 0] == 0), axis=-1)


def layer_lists(x, valid, k, selection):
    """Per cloud of x [C, N, D] (raw features), on the normalised features:
    (idx [C, N, k], kernel values at the listed pairs [C, N, k] (0 where idx < 0),
    reciprocated [C, N, k], zero [C])."""
    x_hat, zero = normalised(x, valid)
    idx = neighbour_lists.neighbour_lists(x_hat, valid, k, selection)
    kv = jnp.where(idx >= 0, neighbour_lists.listed_inner_products(x_hat, idx), 0.0)
    return idx, kv, neighbour_lists.reciprocated(idx), zero


def _hsic(trace, sum_a, sum_b, cross, m):
    """Song et al. 2012, eq. 5 from tr(A B), 1^T A 1, 1^T B 1 and 1^T A B 1."""
    num = trace + sum_a * sum_b / ((m - 1.0) * (m - 2.0)) - 2.0 * cross / (m - 2.0)
    return num / (m * (m - 3.0))


def self_hsic(idx, kv, rec, m):
    """HSIC(K∘M_x, K∘M_x) [L] of each layer from its lists [L, N, k]."""
    row = jnp.sum(kv, axis=-1)
    gathered = jnp.take_along_axis(row, jnp.maximum(idx, 0).reshape(idx.shape[0], -1), axis=-1)
    cross = jnp.sum(kv.reshape(kv.shape[0], -1) * gathered, axis=-1)
    trace = jnp.sum(jnp.where(rec, kv * kv, 0.0), axis=(-2, -1))
    total = jnp.sum(row, axis=-1)
    return _hsic(trace, total, total, cross, m)


def pair_terms(a, b, m, with_hsic):
    """One pair of layers a, b = (idx, kv, rec) [N, k]: (shared-neighbour count int32,
    HSIC(K∘M, L∘M) or None)."""
    ia, ka, ra = a
    ib, kb, rb = b
    eq = (ia[:, :, None] == ib[:, None, :]) & (ia >= 0)[:, :, None]
    match = jnp.any(eq, axis=-1)
    count = jnp.sum(match, dtype=jnp.int32)
    if not with_hsic:
        return count, None
    slot = jnp.argmax(eq, axis=-1)
    a_val = jnp.where(match, ka, 0.0)
    b_val = jnp.where(match, jnp.take_along_axis(kb, slot, axis=-1), 0.0)
    both = match & ra & jnp.take_along_axis(rb, slot, axis=-1)
    trace = jnp.sum(jnp.where(both, a_val * b_val, 0.0))
    row_b = jnp.sum(b_val, axis=-1)
    cross = jnp.sum(a_val * jnp.take(row_b, jnp.maximum(ia, 0)))
    return count, _hsic(trace, jnp.sum(a_val), jnp.sum(row_b), cross, m)


PAIR_BATCH_ELEMENTS = 2**24
"""Match-table entries (pairs x N x k x k) per vectorised batch of layer pairs."""


def all_pairs(lists_a, lists_b, m, with_hsic):
    """Pair terms [La, Lb] of every layer of lists_a against every layer of lists_b
    (each (idx, kv, rec) [L, N, k]): one flat loop over the La x Lb pairs, vectorised
    over batches of them (lax.map with batch_size), so memory stays bounded as N grows."""
    la, n, k = lists_a[0].shape
    lb = lists_b[0].shape[0]
    pa, pb = np.divmod(np.arange(la * lb, dtype=np.int32), lb)
    batch = int(max(1, min(la * lb, PAIR_BATCH_ELEMENTS // max(1, n * k * k))))

    def one(p):
        a = tuple(x[p[0]] for x in lists_a)
        b = tuple(x[p[1]] for x in lists_b)
        count, hsic = pair_terms(a, b, m, with_hsic)
        return (count, hsic) if with_hsic else (count,)

    out = lax.map(one, (jnp.asarray(pa), jnp.asarray(pb)), batch_size=batch)
    out = [o.reshape(la, lb) for o in out]
    return out[0], (out[1] if with_hsic else None)


def mutual_knn_from_counts(count, m, k):
    """Mean over the m valid points of the shared fraction: count / (m k)."""
    return count.astype(jnp.float32) / (m * k)


def cknna_from_hsic(hsic_ab, hsic_a, hsic_b):
    """[La, Lb] CKNNA from the pair HSIC and each layer's own."""
    return hsic_ab / (jnp.sqrt(hsic_a[:, None] * hsic_b[None, :]) + CKNNA_EPS)


def _check_k(v):
    if v < 1:
        raise ArgumentError("{k} must be an integer >= 1, got {v!r}", "k", v=v)


K = Option(
    "k",
    int,
    10,
    "Neighbours per point of the k-NN measures (mutual_knn, cknna, cycle_knn, lcs_knn, "
    "edit_distance_knn).",
    check=_check_k,
)
SELECTION = Option(
    "selection",
    str,
    "auto",
    "Neighbour selection backend: auto, host or xla (identical results).",
    choices=SELECTION_METHODS,
    defining=False,
    flag=False,
)


def list_stats(x, valid, *, k, selection, **_):
    """Neighbour lists of each layer of x [L, N, D] on its normalised features:
    (idx, kv, rec [L, N, k], zero [L]) as `layer_lists`."""
    return layer_lists(x, jnp.broadcast_to(valid, x.shape[:2]), k, selection)


def relabelled(idx, perm):
    """Neighbour lists idx [L, N, k] of points reordered as points[perm]: row i is
    the list of perm[i], each neighbour j renamed inv[j] (inv = perm^-1); -1 stays."""
    inv = jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[0], dtype=perm.dtype))
    rows = jnp.take(idx, perm, axis=1)
    return jnp.where(rows >= 0, jnp.take(inv, jnp.maximum(rows, 0)), -1)


def permute_lists(stats, perm, valid, **_):
    """`list_stats` of the points reordered by perm, without a new neighbour search."""
    idx, kv, rec, zero = stats
    return relabelled(idx, perm), jnp.take(kv, perm, axis=1), jnp.take(rec, perm, axis=1), zero


def _pair_lists(sa, sb):
    ia, ka, ra, za = sa
    ib, kb, rb, zb = sa if sb is None else sb
    return (ia, ka, ra), (ib, kb, rb), za[:, None] | zb[None, :]


def mutual_knn_pairs(sa, sb, valid, *, k, **_):
    """[La, Lb] mutual k-NN of every pair of layers from their lists."""
    a, b, bad = _pair_lists(sa, sb)
    m = jnp.sum(valid).astype(jnp.float32)
    count, _ = all_pairs(a, b, m, False)
    return jnp.where(bad, jnp.nan, mutual_knn_from_counts(count, m, k))


def cknna_pairs(sa, sb, valid, **_):
    """[La, Lb] CKNNA of every pair of layers from their lists."""
    a, b, bad = _pair_lists(sa, sb)
    m = jnp.sum(valid).astype(jnp.float32)
    _, hsic = all_pairs(a, b, m, True)
    ha = self_hsic(*a, m)
    hb = ha if sb is None else self_hsic(*b, m)
    return jnp.where(bad, jnp.nan, cknna_from_hsic(hsic, ha, hb))


def check_directions(points, valid, name, options):
    """A valid zero vector has no direction, which the normalised lists compare."""
    zero = ~np.any(points != 0, axis=-1) & valid
    if zero.any():
        at = tuple(int(i) for i in np.argwhere(zero)[0])
        raise ValueError(
            f"{name} has a zero vector at valid point {at[-1]} (cloud {at[:-1]}): its "
            "direction, which the k-NN measures compare, is undefined; mask it out"
        )


def k_points(options):
    """k neighbours need k + 1 valid points."""
    return options["k"] + 1, f"k={options['k']} needs"


def _cknna_k(options):
    if options["k"] < 2:
        raise ArgumentError(
            "{k} must be an integer >= 2 for cknna (got {v!r})", "k", v=options["k"]
        )


MUTUAL_KNN = SimilarityMeasure(
    name="mutual_knn",
    doc="mean fraction of shared k nearest neighbours (cosine), self excluded",
    reference="Huh et al. 2024, arXiv 2405.07987; platonic-rep AlignmentMetrics.mutual_knn",
    layer_stats=list_stats,
    pair_scores=mutual_knn_pairs,
    options=(K, SELECTION),
    permute=permute_lists,
    min_points=k_points,
    check_values=check_directions,
)
CKNNA = SimilarityMeasure(
    name="cknna",
    doc="centred kernel alignment restricted to mutual k-NN pairs (unbiased HSIC)",
    reference="Huh et al. 2024, arXiv 2405.07987; platonic-rep AlignmentMetrics.cknna",
    layer_stats=list_stats,
    pair_scores=cknna_pairs,
    options=(K, SELECTION),
    permute=permute_lists,
    min_points=lambda o: max(k_points(o), (4, "the unbiased HSIC needs")),
    check=_cknna_k,
    check_values=check_directions,
)
