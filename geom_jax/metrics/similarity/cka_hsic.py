"""Linear centred kernel alignment (CKA) between every pair of layers of two stacks.

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, L = Y Y^T the
linear kernels of two representations of the same m valid points
(Kornblith et al. 2019, ICML, arXiv 1905.00414, eq. 2-3). HSIC is

* biased: tr(K H L H) / (m - 1)^2, H = I - 11^T / m (Gretton et al. 2005);
* unbiased (debiased): Song et al. 2012, JMLR 13, eq. 5, with K~, L~ the kernels
  with zero diagonals,
  [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((m - 1)(m - 2)) - 2 / (m - 2) 1^T K~ L~ 1] / (m (m - 3)).

Both estimators are unchanged when a constant vector is added to every point
(the biased one through H; the unbiased one because K_ij -> K_ij + a_i + a_j + c
leaves the U-centred kernel, hence eq. 5, unchanged), so every layer is first
centred on the mean of its valid points (two passes), which keeps float32
accurate for the large common offsets of LLM hidden states. With centred
features X_c (zero rows at invalid points) everything follows from

* S_ab = sum_ij K_ij L_ij = ||X_a^T X_b||_F^2, the only term that couples the
  two representations through all points;
* per layer: r_i = |x_i|^2 (the diagonal of K), s = sum_i x_i, u = K~ 1 = X s - r
  and 1^T K~ 1 = |s|^2 - sum_i r_i (O(N D) each),

with tr(K~ L~) = S_ab - r_a . r_b and 1^T K~ L~ 1 = u_a . u_b; the biased HSIC is
S_ab / (m - 1)^2 on centred features (H K H = X_c X_c^T).

S is computed by one of two routes, whichever costs fewer FLOPs (`cka_cost`):
``features``, ||X_a^T X_b||^2 for every pair (2 N Da Db per pair, no N x N
matrix), or ``kernels``, the linear kernels in R x R blocks (I, J >= I), each
block of every layer's kernel computed once and shared by all pairs, the
off-diagonal blocks counted twice (N^2 D per layer plus N^2 per pair; never more
than one block of every layer's kernel, KERNEL_BLOCK_BYTES, is held).
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.metrics.declare.observable import Option
from geom_jax.metrics.neighbours import distances
from geom_jax.metrics.similarity.measure import SimilarityMeasure

ROUTES = ("auto", "features", "kernels")

KERNEL_BLOCK_BYTES = 32 * 2**20
"""Bytes of one R x R block of every layer's kernel (both stacks) in the kernels route."""


def cka_cost(n, la, da, lb, db, same):
    """FLOPs of S for La x Lb pairs: {"features": ..., "kernels": ...}.

    features: X_a^T X_b for every pair (2 N Da Db), plus each layer's own
    ||X^T X||^2 when the stacks differ; kernels: the upper-triangle blocks of
    every layer's kernel (N^2 D, half of the N x N products by symmetry) and one
    pass over them per pair (N^2), plus the self terms when the stacks differ."""
    if same:
        return {"features": 2.0 * n * da * da * la * la, "kernels": n * n * la * (da + la)}
    return {
        "features": 2.0 * n * (da * db * la * lb + la * da * da + lb * db * db),
        "kernels": n * n * (la * da + lb * db + la * lb + la + lb),
    }


def pick_route(route, n, la, da, lb, db, same):
    if route != "auto":
        return route
    cost = cka_cost(n, la, da, lb, db, same)
    return "kernels" if cost["kernels"] < cost["features"] else "features"


def centred(x, valid):
    """x [L, N, D] minus the mean of its valid points (two passes), zeros elsewhere."""
    w = valid[None, :, None]
    count = jnp.maximum(jnp.sum(valid), 1).astype(x.dtype)
    xc = jnp.where(w, x, 0.0)
    for _ in range(2):
        xc = jnp.where(w, xc - jnp.sum(xc, axis=1, keepdims=True) / count, 0.0)
    return xc


def layer_terms(xc):
    """Per layer of centred features xc [L, N, D]: r [L, N], u = K~ 1 [L, N] and
    1^T K~ 1 [L]."""
    r = jnp.einsum("lnd,lnd->ln", xc, xc, precision=distances.HIGHEST)
    s = jnp.sum(xc, axis=1)
    u = jnp.einsum("lnd,ld->ln", xc, s, precision=distances.HIGHEST) - r
    total = jnp.einsum("ld,ld->l", s, s, precision=distances.HIGHEST) - jnp.sum(r, axis=1)
    return r, u, total


def _squared_norms_features(xa, xb):
    """||X_a^T X_b||_F^2 [La, Lb]: one layer of xa at a time against all of xb."""

    def row(a):
        m = jnp.einsum("nd,lne->lde", a, xb, precision=distances.HIGHEST)
        return jnp.sum(m * m, axis=(1, 2))

    return lax.map(row, xa)


def _self_features(x):
    """||X_l^T X_l||_F^2 [L]."""

    def one(a):
        m = jnp.einsum("nd,ne->de", a, a, precision=distances.HIGHEST)
        return jnp.sum(m * m)

    return lax.map(one, x)


def block_size(n, layers):
    """Rows R of a kernel block: R x R entries of every layer take KERNEL_BLOCK_BYTES."""
    rows = int(np.sqrt(KERNEL_BLOCK_BYTES / (4.0 * max(1, layers))))
    return max(1, min(n, rows))


def block_pairs(n, rows):
    """Block index pairs (I, J >= I) covering the upper triangle of N x N in R x R
    blocks, int32 [P, 2]."""
    count = -(-n // rows)
    return np.array([(i, j) for i in range(count) for j in range(i, count)], np.int32)


def _squared_norms_kernels(xa, xb):
    """(S [La, Lb], S_aa [La], S_bb [Lb]) = sums of K_a * K_b over all N x N entries,
    from the R x R blocks (I, J >= I) of the kernels, off-diagonal blocks counted
    twice (the kernels are symmetric): half of the N x N products. xb None: the
    same stack (S_aa, S_bb not computed)."""
    la, n, _ = xa.shape
    lb = 0 if xb is None else xb.shape[0]
    rows = block_size(n, la + lb)
    pairs = block_pairs(n, rows)
    h = distances.HIGHEST

    def block(x, i, j):
        """Kernel block [L, R, R] between the rows of blocks i and j; rows that an
        earlier block holds (the last block is shifted back to fit) are zeroed."""
        parts = []
        for b in (i, j):
            start = jnp.minimum(b * rows, n - rows)
            fresh = start + jnp.arange(rows) >= b * rows
            part = lax.dynamic_slice_in_dim(x, start, rows, axis=1)
            parts.append(jnp.where(fresh[None, :, None], part, 0.0))
        return jnp.einsum("lrd,lsd->lrs", parts[0], parts[1], precision=h)

    def body(p, acc):
        i, j = pairs_j[p, 0], pairs_j[p, 1]
        w = jnp.where(i == j, 1.0, 2.0).astype(xa.dtype)
        ka = block(xa, i, j)
        if xb is None:
            return acc[0] + w * jnp.einsum("ars,brs->ab", ka, ka, precision=h), acc[1], acc[2]
        kb = block(xb, i, j)
        return (
            acc[0] + w * jnp.einsum("ars,brs->ab", ka, kb, precision=h),
            acc[1] + w * jnp.einsum("ars,ars->a", ka, ka, precision=h),
            acc[2] + w * jnp.einsum("brs,brs->b", kb, kb, precision=h),
        )

    pairs_j = jnp.asarray(pairs)
    lb = la if xb is None else lb
    zeros = (
        jnp.zeros((la, lb), xa.dtype),
        jnp.zeros((la,), xa.dtype),
        jnp.zeros((lb,), xa.dtype),
    )
    return lax.fori_loop(0, len(pairs), body, zeros)


def symmetric(s):
    """(s + s^T) / 2: exactly symmetric where a stack meets itself."""
    return 0.5 * (s + s.T)


def squared_norms(xa, xb, route):
    """(S [La, Lb], S_aa [La], S_bb [Lb]) of centred stacks (xb None: xa itself,
    S exactly symmetric)."""
    if xb is None:
        s = _squared_norms_kernels(xa, None)[0] if route == "kernels" else None
        s = symmetric(_squared_norms_features(xa, xa) if s is None else s)
        d = jnp.diagonal(s)
        return s, d, d
    if route == "kernels":
        return _squared_norms_kernels(xa, xb)
    return _squared_norms_features(xa, xb), _self_features(xa), _self_features(xb)


def _ratio(num, a, b):
    return num / jnp.sqrt(a[:, None] * b[None, :])


def cka_biased(s, s_a, s_b):
    """[La, Lb] linear CKA with the biased HSIC (the (m - 1)^-2 factors cancel)."""
    return _ratio(s, s_a, s_b)


def _hsic_unbiased(s, rr, uu, tt, m):
    """Song et al. eq. 5 from S, r_a . r_b, u_a . u_b and (1^T K~ 1)(1^T L~ 1)."""
    num = s - rr + tt / ((m - 1.0) * (m - 2.0)) - 2.0 * uu / (m - 2.0)
    return num / (m * (m - 3.0))


def _hsic_unbiased_self(s, terms, m):
    r, u, total = terms
    return _hsic_unbiased(s, jnp.sum(r * r, -1), jnp.sum(u * u, -1), total * total, m)


def cka_unbiased(s, s_a, s_b, terms_a, terms_b, m):
    """[La, Lb] linear CKA with the unbiased HSIC of Song et al. 2012, eq. 5.

    terms_a, terms_b: `layer_terms` of the two stacks; m the number of valid points."""
    (ra, ua, tot_a), (rb, ub, tot_b) = terms_a, terms_b
    h = distances.HIGHEST
    rr = jnp.einsum("an,bn->ab", ra, rb, precision=h)
    uu = jnp.einsum("an,bn->ab", ua, ub, precision=h)
    if terms_a is terms_b:
        rr, uu = symmetric(rr), symmetric(uu)
    hab = _hsic_unbiased(s, rr, uu, tot_a[:, None] * tot_b[None, :], m)
    ha = _hsic_unbiased_self(s_a, terms_a, m)
    hb = _hsic_unbiased_self(s_b, terms_b, m)
    return _ratio(hab, ha, hb)


def check_route(route):
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")


ROUTE = Option(
    "route",
    str,
    "auto",
    "How CKA's sum_ij K_ij L_ij is computed: auto (fewer FLOPs), features or kernels.",
    choices=ROUTES,
    defining=False,
    flag=False,
)


def cka_stats(x, valid, **_):
    """Each layer of x [L, N, D] centred on its valid points (zeros elsewhere)."""
    return centred(x, valid)


def permute_rows(stats, perm, valid=None, **_):
    """Per-layer statistics [L, N, ...] with their rows reordered as stats[:, perm]."""
    return jnp.take(stats, perm, axis=1)


def pair_norms(sa, sb, valid, *, route):
    """(S [La, Lb], S_aa [La], S_bb [Lb]) of centred stacks, by the cheaper route: what
    both CKA estimators share."""
    la, n, da = sa.shape
    lb, db = (la, da) if sb is None else (sb.shape[0], sb.shape[2])
    return squared_norms(sa, sb, pick_route(route, n, la, da, lb, db, sb is None))


def _cka_unbiased_pairs(norms, sa, sb, valid, **_):
    ta = layer_terms(sa)
    tb = ta if sb is None else layer_terms(sb)
    return cka_unbiased(*norms, ta, tb, jnp.sum(valid).astype(sa.dtype))


CKA = SimilarityMeasure(
    name="cka",
    doc="linear CKA, biased HSIC",
    reference="Kornblith et al. 2019, arXiv 1905.00414, eq. 2-3",
    layer_stats=cka_stats,
    pair_scores=lambda norms, sa, sb, valid, **_: cka_biased(*norms),
    options=(ROUTE,),
    pair_stats=pair_norms,
    permute=permute_rows,
)
CKA_DEBIASED = SimilarityMeasure(
    name="cka_debiased",
    doc="linear CKA, unbiased HSIC",
    reference="Kornblith et al. 2019, arXiv 1905.00414; Song et al. 2012, JMLR 13, eq. 5",
    layer_stats=cka_stats,
    pair_scores=_cka_unbiased_pairs,
    options=(ROUTE,),
    pair_stats=pair_norms,
    permute=permute_rows,
    min_points=lambda o: (4, "the unbiased HSIC needs"),
)
