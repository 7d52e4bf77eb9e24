"""Exact refinement of selected neighbour pairs and re-ranking by exact distance.

The pairs selected from the Gram matrix are refined by direct differences
|x_i - x_j|^2 on the raw (uncentred) points, and candidate lists are
re-ranked by (exact distance, index) with a host (NumPy sort of packed keys)
or an XLA (rank by counting) backend; both give identical results.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.metrics import distances, host_callback, sharding
from geom_jax.metrics.packing import low_int32, pack, unpack_values
from geom_jax.metrics.selection import select_neighbors

REFINE_MARGIN = 4
"""Extra Gram-ranked candidates refined beyond k, so that float32 Gram errors
that swap neighbours across rank k are repaired by the exact re-ranking."""


def _flatten(a, keep):
    """Merge the leading axes of a, keeping the last `keep` axes."""
    return a.reshape((-1,) + a.shape[a.ndim - keep :])


def refine_sq_distances(x, idx):
    """Exact |x_i - x_j|^2 for j = idx[..., i, :], by direct differences.

    x [..., N, D] raw points, idx [..., N, K] -> [..., N, K] float32. Per
    cloud, a loop over the K slots gathers one [N, D] block (cache resident)
    and reduces it with a matrix-vector product: on XLA:CPU this is 3-4x
    faster than gathering [N, K, D] at once and reducing over D.
    """
    batch = x.shape[:-2]
    n, d = x.shape[-2:]
    k = idx.shape[-1]
    if k == 0 or n == 0:
        return jnp.zeros(idx.shape, x.dtype)
    xf, idf = _flatten(x, 2), _flatten(idx, 2)
    ones = jnp.ones((d,), x.dtype)

    def one(args):
        pts, ids = args

        def slot(j, acc):
            diff = jnp.take(pts, ids[:, j], axis=0, mode="clip") - pts
            return acc.at[j].set(jnp.dot(diff * diff, ones, precision=distances.HIGHEST))

        return lax.fori_loop(0, k, slot, sharding.like(jnp.zeros((k, n), x.dtype), pts)).T

    out = lax.map(one, (xf, idf))
    return out.reshape(batch + idx.shape[-2:])


def candidate_ranks(d2, idx):
    """Rank of each candidate within its row in (d2, index) order, [..., K] int32.

    Counting (O(K^2) compares per row, summed by a matrix-vector product),
    which XLA:CPU runs far faster than its sort on short rows. Candidate
    indices must be distinct within a row.
    """
    k = d2.shape[-1]
    a_d, b_d = d2[..., None, :], d2[..., :, None]
    a_i, b_i = idx[..., None, :], idx[..., :, None]
    before = (a_d < b_d) | ((a_d == b_d) & (a_i < b_i))
    ones = jnp.ones((k,), jnp.float32)
    return jnp.dot(before.astype(jnp.float32), ones, precision=distances.HIGHEST).astype(jnp.int32)


def place_by_rank(values, rank, k, fill):
    """out[..., r] = values[..., j] where rank[..., j] = r < k; one flat scatter."""
    batch = values.shape[:-1]
    rows = 1
    for s in batch:
        rows *= s
    kk = values.shape[-1]
    base = (jnp.arange(rows, dtype=jnp.int32) * k)[:, None]
    r = rank.reshape(rows, kk)
    target = jnp.where(r < k, base + r, rows * k)
    out = jnp.full((rows * k,), fill, values.dtype)
    out = out.at[target.reshape(-1)].set(values.reshape(-1), mode="drop", unique_indices=True)
    return out.reshape(batch + (k,))


def _host_sort(d2, idx, *, k):
    d2 = np.asarray(d2, np.float32)
    idx = np.asarray(idx, np.int32)
    packed = pack(d2, idx.astype(np.uint32))
    packed.sort(axis=-1)
    packed = np.ascontiguousarray(packed[..., :k])
    order = low_int32(packed)
    sorted_vals = unpack_values(packed >> np.uint64(32))
    return sorted_vals, order


def _xla_sort(d2, idx, *, k):
    rank = candidate_ranks(d2, idx)
    return place_by_rank(d2, rank, k, jnp.inf), place_by_rank(idx, rank, k, -1)


def _host_callback_sort(d2, idx, *, k):
    shape = d2.shape[:-1] + (k,)
    out = (jax.ShapeDtypeStruct(shape, d2.dtype), jax.ShapeDtypeStruct(shape, jnp.int32))
    vals, order = host_callback.host_call(functools.partial(_host_sort, k=k), out, d2, idx)
    return sharding.like(vals, d2), sharding.like(order, d2)


def sort_candidates(d2, idx, k, method="xla"):
    """First k of the candidates (d2, idx) [..., K] in (d2, index) order.

    d2 must be >= 0 or +inf and the indices distinct within a row. The host
    backend sorts packed (d2 bits, index) keys in NumPy; the XLA one ranks
    by counting. Both give the same result.
    """
    host_callback.check_method(method)
    if k > d2.shape[-1]:
        raise ValueError(f"cannot keep {k} of {d2.shape[-1]} candidates")
    host = functools.partial(_host_callback_sort, k=k)
    xla = functools.partial(_xla_sort, k=k)
    return host_callback.dispatch(method, host, xla, d2, idx)


def refine_candidates(x, idx, valid):
    """Exact squared distances of candidates idx [..., N, K]; +inf where the
    candidate is the point itself or not a valid column."""
    n = x.shape[-2]
    exact = refine_sq_distances(x, idx)
    ok = jnp.take_along_axis(valid[..., None, :], idx, axis=-1) & (idx != jnp.arange(n)[:, None])
    return jnp.where(ok, exact, jnp.inf)


def num_candidates(k: int, n: int) -> int:
    """Gram-selected candidates refined for k exact neighbours among n points."""
    return min(k + REFINE_MARGIN, n - 1)


def rerank_candidates(x, near, valid, k, method="auto"):
    """Refines candidates near [..., N, K] on the raw points and keeps the k
    nearest by (exact distance, index): squared distances and indices
    [..., N, k], (+inf, -1) beyond the available valid neighbours."""
    sq, idx = sort_candidates(refine_candidates(x, near, valid), near, k, method)
    return sq, jnp.where(jnp.isfinite(sq), idx, -1)


def exact_knn(x, gram, valid, k, method="auto"):
    """k nearest valid neighbours with exact distances (internal, no checks):
    `num_candidates` selected from the centred Gram matrix, then
    `rerank_candidates`."""
    near, _ = select_neighbors(gram, valid, k_near=num_candidates(k, x.shape[-2]), method=method)
    return rerank_candidates(x, near, valid, k, method)
