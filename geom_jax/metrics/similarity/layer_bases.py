"""Per-layer orthonormal bases of centred representations, and the scores of layer pairs
from their small cross products: the shared machinery of the shape metrics
(``shape_metrics``) and the CCA measures (``cca``).

Each layer x [N, D] is centred on its valid points (``cka_hsic.centred``, zero rows
elsewhere) and factored once, x_c = U diag(s) V^T (``bases``: one float32 SVD of the
N x D matrix per layer, K = min(N, D) columns). Directions whose singular value is at
most s_max max(m, D) eps_float32 (m valid points; NumPy's ``matrix_rank`` rule) are
numerically zero: their columns of U are set to zero and they take no part. Every
measure here is then a function of the K_a x K_b matrix U_a^T U_b, weighted per
direction, of the two layers of a pair (2 N K_a K_b FLOPs to form), which
``pair_matrix`` computes for every pair (the upper triangle only when a stack meets
itself). Reordering the points reorders the rows of U only: a permutation null
permutes U (``cka_hsic.permute_rows``) instead of factoring again.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.metrics.neighbours import distances
from geom_jax.metrics.similarity import cka_hsic

EPS32 = float(np.finfo(np.float32).eps)


def bases(x, valid):
    """Centred SVD of every layer of x [L, N, D] over its valid points (valid [N]).

    Returns (u [L, N, K], s [L, K], vt [L, K, D], rank [L, K] bool), K = min(N, D),
    singular values in decreasing order: u is zero at invalid rows and in the columns
    of numerically zero directions (rank False), where s is zero too."""
    xc = cka_hsic.centred(x, valid)
    m = jnp.sum(valid).astype(jnp.float32)
    wide = jnp.maximum(m, float(x.shape[-1]))

    def one(a):
        u, s, vt = jnp.linalg.svd(a, full_matrices=False)
        rank = s > s[0] * wide * EPS32
        u = jnp.where(valid[:, None] & rank[None, :], u, 0.0)
        return u, jnp.where(rank, s, 0.0), vt, rank

    return lax.map(one, xc)


def cross(a, b):
    """a^T b of one pair: a [N, Ka], b [N, Kb] -> [Ka, Kb]."""
    return jnp.einsum("nk,nj->kj", a, b, precision=distances.HIGHEST)


def pair_matrix(stats_a, stats_b, one, ok_a, best):
    """Scores [La, Lb] of every pair of layers.

    ``one(sa, sb)`` -> (score of (a, b), score of (b, a) as a pair of its own) for the
    statistics of one layer of each stack (leaves without their L axis); the second is
    read only when a stack meets itself (stats_b None), where only the pairs i < j are
    computed and the diagonal is ``best`` (NaN where ok_a [L] is False: a layer with no
    direction). One pair at a time (lax.map): the memory is one pair's."""
    same = stats_b is None
    la = ok_a.shape[0]
    other = stats_a if same else stats_b
    lb = jax.tree.leaves(other)[0].shape[0]
    pairs = [(i, j) for i in range(la) for j in (range(i + 1, lb) if same else range(lb))]
    pairs = np.array(pairs, np.int32).reshape(-1, 2)
    out = jnp.full((la, lb), jnp.nan, jnp.float32)
    if len(pairs):

        def body(p):
            sa = jax.tree.map(lambda s: s[p[0]], stats_a)
            sb = jax.tree.map(lambda s: s[p[1]], other)
            return one(sa, sb)

        ij, ji = lax.map(body, jnp.asarray(pairs))
        out = out.at[pairs[:, 0], pairs[:, 1]].set(ij)
        if same:
            out = out.at[pairs[:, 1], pairs[:, 0]].set(ji)
    if same:
        d = np.arange(la)
        out = out.at[d, d].set(jnp.where(ok_a, jnp.float32(best), jnp.nan))
    return out
