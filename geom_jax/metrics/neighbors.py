"""Nearest-neighbour selection, exact refinement and re-ranking.

Selection ranks the columns of each row of a (centred) Gram matrix G by the
key sq_j - 2 G_ij (= |x_i - x_j|^2 - |x_i|^2, the same order as the
distances) and returns, per point, the indices of its nearest valid points
and of its neighbours at a few fixed ranks, in (key, index) order so that
ties go to the lower index. Two interchangeable backends produce identical
indices:

* "xla": lax.top_k over each row (the path for GPU/TPU);
* "host": a host callback to NumPy: np.partition finds each row's
  m-th key, the keys below it are sorted as packed (key bits, index) uint64.
  XLA:CPU's top_k is 10-20x slower than NumPy's introselect on rows of
  1024, and on CPU the data are already in host memory.

"auto" picks "host" on CPU and "xla" elsewhere via lax.platform_dependent.
The selected pairs are then refined by direct differences |x_i - x_j|^2 on
the raw (uncentred) points, and candidate lists are re-ranked by the exact
distances (again with a host or an XLA backend, identical results).
"""

import functools
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.metrics import distances, sharding, validation

try:
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:  # older or newer jax without it
    _buffer_callback = None

SELECTION_METHODS = ("auto", "host", "xla")
REFINE_MARGIN = 4
"""Extra Gram-ranked candidates refined beyond k, so that float32 Gram errors
that swap neighbours across rank k are repaired by the exact re-ranking."""

_POOL = None
_LOW32 = np.uint64(0xFFFFFFFF)


def _pool():
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1))
    return _POOL


def _check_method(method):
    if method not in SELECTION_METHODS:
        raise ValueError(f"selection must be one of {SELECTION_METHODS}, got {method!r}")


def _dispatch(method, host, xla, *args):
    if method == "xla":
        return xla(*args)
    if method == "host":
        return host(*args)
    return lax.platform_dependent(*args, cpu=host, default=xla)


def _ordered_bits(vals):
    """uint32 of float32 vals, monotone in the value (negatives included, no NaN)."""
    bits = vals.view(np.uint32)
    flip = (bits.view(np.int32) >> 31).view(np.uint32)
    flip |= np.uint32(0x80000000)
    flip ^= bits
    return flip


def _unpack_values(high):
    """Inverse of _ordered_bits."""
    bits = high.astype(np.uint32)
    flip = (~bits.view(np.int32) >> 31).view(np.uint32) | np.uint32(0x80000000)
    return (bits ^ flip).view(np.float32)


def _pack(vals, cols):
    """uint64 keys whose order is the (value, column) order.

    Keys and squared distances never hold -0.0 (x - x and sums of squares
    round to +0.0), so bit order matches the float order, ties included.
    """
    packed = _ordered_bits(vals).astype(np.uint64)
    packed <<= np.uint64(32)
    packed |= cols.view(np.uint64) if cols.dtype == np.int64 else cols.astype(np.uint64)
    return packed


def _low_int32(packed):
    """The column (low 32 bits) of packed keys, as int32."""
    if sys.byteorder == "little":
        return packed.view(np.uint32)[..., 0::2].astype(np.int32)
    return (packed & _LOW32).astype(np.uint32).view(np.int32)


def _smallest_sorted(keys, m):
    """Columns of the m smallest keys of each row of keys [R, N], in (key, column) order.

    np.partition finds each row's m-th key t; the entries <= t are exactly
    the m smallest unless t is tied (then, or when m >= N, the row is sorted
    in full). Whole blocks of rows at a time, so the GIL is released for
    long stretches.
    """
    r, n = keys.shape
    out = np.empty((r, m), np.int32)
    if m < n:
        kth = np.partition(keys, m - 1, axis=-1)[:, m - 1]
        within = keys <= kth[:, None]
        clean = np.count_nonzero(within, axis=-1) == m
        if not clean.all():
            within[~clean] = False
        flat = np.flatnonzero(within)
        clean_rows = np.flatnonzero(clean)
        cols = flat.reshape(-1, m) - (clean_rows * n)[:, None]
        packed = _pack(keys.reshape(-1)[flat].reshape(-1, m), cols)
        packed.sort(axis=-1)
        out[clean_rows] = _low_int32(packed)
        rest = np.flatnonzero(~clean)
    else:
        rest = np.arange(r)
    if rest.size:
        cols = np.broadcast_to(np.arange(n), (rest.size, n))
        packed = _pack(keys[rest], cols)
        packed.sort(axis=-1)
        out[rest] = _low_int32(np.ascontiguousarray(packed[:, :m]))
    return out


def _host_keys(gram, sq, valid_cols, row0):
    """Keys of rows row0.. of slabs gram [S, R, N]: sq_j - 2 G_ij (one rounding,
    as in the XLA path), +inf on the diagonal and at invalid columns. -> [S*R, N]."""
    keys = gram * np.float32(-2.0)
    keys += sq[:, None, :]
    s, r, n = keys.shape
    rows = np.arange(r)
    keys[:, rows, rows + row0] = np.inf
    if not valid_cols.all():
        keys[np.broadcast_to(~valid_cols[:, None, :], keys.shape)] = np.inf
    return keys.reshape(s * r, n)


def _host_select_block(gram, sq, valid_near, valid_rank, row0, k_near, ranks):
    """Selection for rows row0.. of slabs gram [S, R, N] -> ([S, R, k_near], [S, R, #ranks])."""
    s, r, _ = gram.shape
    positions = np.asarray(ranks, np.int64) - 1
    need = int(max(ranks)) if ranks else 0
    near = np.zeros((s, r, k_near), np.int32)
    rank = np.zeros((s, r, len(ranks)), np.int32)
    same = np.all(valid_near == valid_rank, axis=-1) if (k_near and need) else np.zeros(s, bool)
    pick = lambda a, which: a if which.all() else a[which]
    if same.any():
        keys = _host_keys(pick(gram, same), pick(sq, same), pick(valid_near, same), row0)
        order = _smallest_sorted(keys, max(k_near, need)).reshape(-1, r, max(k_near, need))
        near[same] = order[..., :k_near]
        rank[same] = order[..., positions]
    other = ~same
    if other.any():
        g, q = pick(gram, other), pick(sq, other)
        if k_near:
            keys = _host_keys(g, q, pick(valid_near, other), row0)
            near[other] = _smallest_sorted(keys, k_near).reshape(-1, r, k_near)
        if need:
            keys = _host_keys(g, q, pick(valid_rank, other), row0)
            rank[other] = _smallest_sorted(keys, need)[:, positions].reshape(-1, r, len(ranks))
    return near, rank


def _host_select(gram, sq, valid_near, valid_rank, *, k_near, ranks):
    """Work split over threads: groups of whole slabs, or row blocks when slabs are few."""
    gram = np.asarray(gram, np.float32)
    batch, n = gram.shape[:-2], gram.shape[-1]
    rows = lambda a, dt: np.broadcast_to(np.asarray(a, dt), batch + (n,)).reshape(-1, n)
    gram = gram.reshape(-1, n, n)
    sq, vn, vr = rows(sq, np.float32), rows(valid_near, bool), rows(valid_rank, bool)
    slabs = gram.shape[0]
    workers = os.cpu_count() or 1
    if slabs >= workers:
        cuts = np.linspace(0, slabs, workers + 1).astype(int)
        items = [(slice(a, b), 0, n) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    else:
        cuts = np.linspace(0, n, -(-workers // slabs) + 1).astype(int)
        items = [
            (slice(i, i + 1), a, b)
            for i in range(slabs)
            for a, b in zip(cuts[:-1], cuts[1:])
            if b > a
        ]

    def work(item):
        sl, a, b = item
        return _host_select_block(gram[sl, a:b], sq[sl], vn[sl], vr[sl], a, k_near, ranks)

    near = np.empty((slabs, n, k_near), np.int32)
    rank = np.empty((slabs, n, len(ranks)), np.int32)
    for (sl, a, b), (nr, rk) in zip(items, _pool().map(work, items)):
        near[sl, a:b] = nr
        rank[sl, a:b] = rk
    return near.reshape(batch + (n, k_near)), rank.reshape(batch + (n, len(ranks)))


def _xla_keys(gram, sq, valid_cols):
    n = gram.shape[-1]
    keys = sq[..., None, :] - 2.0 * gram
    return jnp.where(valid_cols[..., None, :] & ~jnp.eye(n, dtype=bool), keys, jnp.inf)


def _xla_select(gram, sq, valid_near, valid_rank, *, k_near, ranks):
    batch, n = gram.shape[:-2], gram.shape[-1]
    near = jnp.zeros(batch + (n, 0), jnp.int32)
    rank = jnp.zeros(batch + (n, 0), jnp.int32)
    if k_near:
        _, near = lax.top_k(-_xla_keys(gram, sq, valid_near), k_near)
    if ranks:
        _, top = lax.top_k(-_xla_keys(gram, sq, valid_rank), max(ranks))
        rank = top[..., np.asarray(ranks) - 1]
    return near.astype(jnp.int32), rank.astype(jnp.int32)


def host_call(fn, out_shapes, *args):
    """Run the NumPy function fn(*arrays) -> tuple of arrays on the host.

    Uses jax.experimental.buffer_callback where available: it hands the
    callback the device buffers themselves (zero-copy on CPU), whereas
    jax.pure_callback device_puts a copy of every operand first (~75 ms per
    130 MB here). Falls back to pure_callback otherwise.
    """
    if _buffer_callback is None:
        return jax.pure_callback(fn, out_shapes, *args, vmap_method="broadcast_all")

    def callback(ctx, outs, *buffers):
        del ctx
        results = fn(*(np.asarray(b) for b in buffers))
        for out, result in zip(outs, results):
            np.asarray(out)[...] = result

    return _buffer_callback(callback, out_shapes, vmap_method="broadcast_all")(*args)


def _host_callback_select(gram, sq, valid_near, valid_rank, *, k_near, ranks):
    batch, n = gram.shape[:-2], gram.shape[-1]
    out = (
        jax.ShapeDtypeStruct(batch + (n, k_near), jnp.int32),
        jax.ShapeDtypeStruct(batch + (n, len(ranks)), jnp.int32),
    )
    fn = functools.partial(_host_select, k_near=k_near, ranks=ranks)
    near, rank = host_call(fn, out, gram, sq, valid_near, valid_rank)
    return sharding.like(near, gram), sharding.like(rank, gram)


def select_neighbors(gram, valid_near, valid_rank=None, *, k_near, ranks=(), method="auto"):
    """Neighbour indices from a Gram matrix [..., N, N] of (centred) points.

    Returns (near [..., N, k_near], ranked [..., N, len(ranks)]) int32:
    near are the k_near nearest columns allowed by valid_near, ranked the
    columns at 1-based neighbour ranks `ranks` among those allowed by
    valid_rank (default valid_near). The point itself is excluded; order is
    by (sq_j - 2 G_ij, index). Rows short of valid columns continue with
    excluded columns in index order (callers mask them).
    """
    _check_method(method)
    ranks = tuple(int(r) for r in ranks)
    n = gram.shape[-1]
    if k_near > n or (ranks and max(ranks) > n):
        raise ValueError(f"cannot select {max((k_near,) + ranks)} neighbours among N = {n} points")
    sq = jnp.diagonal(gram, axis1=-2, axis2=-1)
    if valid_rank is None:
        valid_rank = valid_near
    valid_near = jnp.broadcast_to(valid_near, sq.shape)
    valid_rank = jnp.broadcast_to(valid_rank, sq.shape)
    xla = functools.partial(_xla_select, k_near=k_near, ranks=ranks)
    host = functools.partial(_host_callback_select, k_near=k_near, ranks=ranks)
    return _dispatch(method, host, xla, gram, sq, valid_near, valid_rank)


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
    packed = _pack(d2, idx.astype(np.uint32))
    packed.sort(axis=-1)
    packed = np.ascontiguousarray(packed[..., :k])
    order = _low_int32(packed)
    sorted_vals = _unpack_values(packed >> np.uint64(32))
    return sorted_vals, order


def _xla_sort(d2, idx, *, k):
    rank = candidate_ranks(d2, idx)
    return place_by_rank(d2, rank, k, jnp.inf), place_by_rank(idx, rank, k, -1)


def _host_callback_sort(d2, idx, *, k):
    shape = d2.shape[:-1] + (k,)
    out = (jax.ShapeDtypeStruct(shape, d2.dtype), jax.ShapeDtypeStruct(shape, jnp.int32))
    vals, order = host_call(functools.partial(_host_sort, k=k), out, d2, idx)
    return sharding.like(vals, d2), sharding.like(order, d2)


def sort_candidates(d2, idx, k, method="xla"):
    """First k of the candidates (d2, idx) [..., K] in (d2, index) order.

    d2 must be >= 0 or +inf and the indices distinct within a row. The host
    backend sorts packed (d2 bits, index) keys in NumPy; the XLA one ranks
    by counting. Both give the same result.
    """
    _check_method(method)
    if k > d2.shape[-1]:
        raise ValueError(f"cannot keep {k} of {d2.shape[-1]} candidates")
    host = functools.partial(_host_callback_sort, k=k)
    xla = functools.partial(_xla_sort, k=k)
    return _dispatch(method, host, xla, d2, idx)


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


@functools.partial(jax.jit, static_argnames=("k", "method"))
def _knn(x, valid, k, method):
    gram, _ = distances.centred_gram(x, valid)
    sq, idx = exact_knn(x, gram, valid, k, method)
    return jnp.sqrt(sq), idx


def knn(x, k, mask=None, *, selection="auto"):
    """k nearest neighbours of every point of each cloud x [..., N, D].

    Returns (dists, idx) [..., N, k]: float32 distances and int32 indices,
    the point itself excluded, ordered by (distance, index) so ties go to the
    lower index. Candidates are selected from the centred Gram matrix and
    the returned distances are exact direct differences of the selected
    pairs. Only points with mask True are neighbours.
    """
    _check_method(selection)
    x = validation.as_points(x, "x")
    validation.check_max_k(x.shape[-2], k, name="k")
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask, max_k=k)
    return _knn(x, distances.valid_or_all(x, mask), k, selection)
