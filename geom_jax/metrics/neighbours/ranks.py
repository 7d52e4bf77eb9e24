"""Neighbour ranks of query points, counted by exact float arithmetic (no sort, no rank matrix).

rank(i, q) = 1 + #{valid j != i : key(i, j) < key(i, q), or equal and j < q}
with key(i, j) = |x_j|^2 - 2 x_i . x_j (centred points): the rank of q in i's
distance order, ties to the lower index. Information imbalance (Glielmo et
al. 2022, PNAS Nexus 1(2) pgac039, eq. 1) reads these at each point's
nearest neighbour in another representation.
"""

import jax.numpy as jnp

STEP = 2.0**126
"""step(d) = min(max(d, 0) * STEP, 1) is exactly [d > 0] for every float32 d that is
not a denormal: plain arithmetic, which XLA:CPU vectorises where a compare-select
reduction runs element by element (3x slower over the N x N keys)."""


def step(d):
    return jnp.minimum(jnp.maximum(d, 0.0) * STEP, 1.0)


def is_zero(d):
    return 1.0 - jnp.minimum(jnp.abs(d) * STEP, 1.0)


def count_before(keys, kq, queries, cols):
    """#{columns c of keys [..., R, M]: key < kq, or equal and c < q} [..., R, Q] float32
    (exact integers) for the queries q = queries[..., R, Q] with keys kq [..., R, Q];
    cols [M] float32 the columns' indices. A sum over blocks of columns counts the same."""
    d = kq[..., None] - keys[..., :, None, :]
    qf = queries.astype(jnp.float32)
    return jnp.sum(step(d) + is_zero(d) * step(qf[..., None] - cols), axis=-1)


def ranks_from_counts(counted, kq, own_key, queries, own):
    """rank(i, queries[i, q]) [..., R, Q] int32 from count_before over every column
    (the row's own among them), the queries' keys kq, each row's own key own_key [..., R]
    (its diagonal entry, subtracted) and the rows' indices own [R]."""
    d_self = kq - own_key[..., None]
    qf = queries.astype(jnp.float32)
    self_counted = step(d_self) + is_zero(d_self) * step(qf - own.astype(jnp.float32)[:, None])
    return 1 + (counted - self_counted).astype(jnp.int32)


def count_ranks(keys, kq, own_key, queries, own):
    """rank(i, queries[i, q]) [..., R, Q] int32 from rows of keys [..., R, N] (+inf at
    invalid columns), the queries' keys kq [..., R, Q], each row's own key
    own_key [..., R] (its diagonal entry, subtracted) and the rows' indices own [R]."""
    cols = jnp.arange(keys.shape[-1], dtype=jnp.float32)
    return ranks_from_counts(count_before(keys, kq, queries, cols), kq, own_key, queries, own)


def ranks_from_gram(gram, valid, queries):
    """rank(i, queries[i, q]) [C, N, Q] int32 from the centred Gram matrix [C, N, N]:
    from 1, among valid points other than i, by (key, index) order, with key(i, j)
    = |x_j|^2 - 2 x_i . x_j. Queries must be valid points other than i (nearest
    neighbours are); rows of invalid points hold unspecified values."""
    n = gram.shape[-1]
    sq = jnp.diagonal(gram, axis1=-2, axis2=-1)
    col_key = sq + jnp.where(valid, 0.0, jnp.inf)
    q = jnp.maximum(queries, 0)
    flat_q = q.reshape(q.shape[:-2] + (-1,))
    kq = jnp.take_along_axis(col_key, flat_q, axis=-1).reshape(q.shape)
    kq = kq - 2.0 * jnp.take_along_axis(gram, q, axis=-1)
    keys = col_key[..., None, :] - 2.0 * gram
    return count_ranks(keys, kq, col_key - 2.0 * sq, q, jnp.arange(n))
