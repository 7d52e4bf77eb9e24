"""Neighbour selection from a (centred) Gram matrix, host or XLA backend.

Selection ranks the columns of each row of G by the key sq_j - 2 G_ij
(= |x_i - x_j|^2 - |x_i|^2, the same order as the distances; the host path
uses half of it) and returns, per
point, the indices of its nearest valid points and of its neighbours at a
few fixed ranks, in (key, index) order so that ties go to the lower index.
Two interchangeable backends produce identical indices:

* "xla": lax.top_k over each row (the path for GPU/TPU);
* "host": a host callback to NumPy: np.partition finds each row's
  m-th key, the keys below it are sorted as packed (key bits, index) uint64.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.metrics.neighbours import host_selection, manual_axes, native_kernels
from geom_jax.metrics.neighbours.packing import low_int32, pack


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
        flat = np.flatnonzero(keys <= kth[:, None])
        counts = np.diff(np.searchsorted(flat, np.arange(r + 1) * n))
        clean = counts == m
        if not clean.all():
            flat = flat[np.repeat(clean, counts)]
        clean_rows = np.flatnonzero(clean)
        cols = flat.reshape(-1, m) - (clean_rows * n)[:, None]
        packed = pack(keys.reshape(-1)[flat].reshape(-1, m), cols)
        packed.sort(axis=-1)
        out[clean_rows] = low_int32(packed)
        rest = np.flatnonzero(~clean)
    else:
        rest = np.arange(r)
    if rest.size:
        cols = np.broadcast_to(np.arange(n), (rest.size, n))
        packed = pack(keys[rest], cols)
        packed.sort(axis=-1)
        out[rest] = low_int32(np.ascontiguousarray(packed[:, :m]))
    return out


def _host_keys(gram, sq, valid_cols, row0):
    """Keys of rows row0.. of slabs gram [S, R, N]: sq_j / 2 - G_ij, +inf on the diagonal
    and at invalid columns. -> [S*R, N]. Halving is exact, so these are exactly half of
    the XLA path's sq_j - 2 G_ij (same order, same ties), in one pass."""
    keys = np.subtract(np.float32(0.5) * sq[:, None, :], gram)
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


ROW_BLOCK = 256
"""Rows per unit of host selection work: a block's keys, partition copy and masks
(3 x 1 MiB at N = 1024) stay in a core's L2 cache (30% faster than whole slabs)."""


def _host_select(gram, sq, valid_near, valid_rank, *, k_near, ranks):
    """Work split over threads in blocks of ROW_BLOCK rows of each slab."""
    gram = np.asarray(gram, np.float32)
    batch, n = gram.shape[:-2], gram.shape[-1]
    rows = lambda a, dt: np.broadcast_to(np.asarray(a, dt), batch + (n,)).reshape(-1, n)
    gram = gram.reshape(-1, n, n)
    sq, vn, vr = rows(sq, np.float32), rows(valid_near, bool), rows(valid_rank, bool)
    slabs = gram.shape[0]
    workers = os.cpu_count() or 1
    block = max(1, min(ROW_BLOCK, -(-n * slabs // workers)))
    items = [(i, a, min(a + block, n)) for i in range(slabs) for a in range(0, n, block)]

    def work(item):
        i, a, b = item
        sl = slice(i, i + 1)
        return _host_select_block(gram[sl, a:b], sq[sl], vn[sl], vr[sl], a, k_near, ranks)

    near = np.empty((slabs, n, k_near), np.int32)
    rank = np.empty((slabs, n, len(ranks)), np.int32)
    for (i, a, b), (nr, rk) in zip(items, host_selection.thread_map(work, items)):
        near[i, a:b] = nr[0]
        rank[i, a:b] = rk[0]
    return near.reshape(batch + (n, k_near)), rank.reshape(batch + (n, len(ranks)))


def host_select_rows(gram_rows, sq, valid_near, valid_rank, row0, *, k_near, ranks):
    """Host selection for rows row0.. of one cloud: gram_rows [R, N] (its rows of
    the centred Gram matrix), sq, valid_near, valid_rank [N] -> ([R, k_near],
    [R, #ranks]) int32, threads over ROW_BLOCK rows; what the row-blocked
    kernels (metrics/neighbours/blocked_rows.py) call per block."""
    gram_rows = np.asarray(gram_rows, np.float32)
    r = gram_rows.shape[0]
    row0 = int(np.asarray(row0))
    sq, vn, vr = (np.asarray(a)[None] for a in (sq, valid_near, valid_rank))
    workers = os.cpu_count() or 1
    block = max(1, min(ROW_BLOCK, -(-r // workers)))
    starts = list(range(0, r, block))

    def work(a):
        b = min(a + block, r)
        return _host_select_block(gram_rows[None, a:b], sq, vn, vr, row0 + a, k_near, ranks)

    near = np.empty((r, k_near), np.int32)
    rank = np.empty((r, len(ranks)), np.int32)
    for a, (nr, rk) in zip(starts, host_selection.thread_map(work, starts)):
        near[a : a + nr.shape[1]] = nr[0]
        rank[a : a + rk.shape[1]] = rk[0]
    return near, rank


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


def _host_callback_select(gram, sq, valid_near, valid_rank, *, k_near, ranks):
    batch, n = gram.shape[:-2], gram.shape[-1]
    out = (
        jax.ShapeDtypeStruct(batch + (n, k_near), jnp.int32),
        jax.ShapeDtypeStruct(batch + (n, len(ranks)), jnp.int32),
    )
    if native_kernels.row_selection_preferred(gram.shape[-1], max((k_near,) + ranks)):
        near, rank = native_kernels.select_rows(
            gram, sq, valid_near, valid_rank, 0, k_near=k_near, ranks=ranks
        )
    else:
        fn = functools.partial(_host_select, k_near=k_near, ranks=ranks)
        near, rank = host_selection.host_call(fn, out, gram, sq, valid_near, valid_rank)
    return manual_axes.like(near, gram), manual_axes.like(rank, gram)


def select_neighbours(gram, valid_near, valid_rank=None, *, k_near, ranks=(), method="auto"):
    """Neighbour indices from a Gram matrix [..., N, N] of (centred) points.

    Returns (near [..., N, k_near], ranked [..., N, len(ranks)]) int32:
    near are the k_near nearest columns allowed by valid_near, ranked the
    columns at 1-based neighbour ranks `ranks` among those allowed by
    valid_rank (default valid_near). The point itself is excluded; order is
    by (sq_j - 2 G_ij, index). Rows short of valid columns continue with
    excluded columns in index order (callers mask them).
    """
    host_selection.check_method(method)
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
    return host_selection.dispatch(method, host, xla, gram, sq, valid_near, valid_rank)
