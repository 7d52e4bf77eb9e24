"""Exact neighbour selection in blocks of query rows: never the N x N Gram matrix.

A cloud's rows are processed B at a time: the block's rows of the centred Gram
matrix (one [B, D] x [D, N] HIGHEST-precision product), the selection of each
row's nearest valid columns and of its columns at fixed ranks from the same
keys sq_j - 2 G_ij as the dense path (metrics/neighbours/selection.py: NumPy host
selection on CPU, lax.top_k elsewhere), and the selection keys of the chosen
candidates, which `refinement.certify` needs to certify the Gram order or
re-rank by direct differences. Memory per cloud is O(N (B + k + #ranks)).

Rows are mapped over blocks by a `RowMap`: `LOCAL` (lax.map over the blocks
on one device) or `ShardedRows(mesh)` (the blocks split over a mesh axis
inside shard_map, every device holding the points and its own rows, results
all-gathered), so every kernel below runs unchanged on one device or many.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from geom_jax.metrics import chunking
from geom_jax.metrics.neighbours import (
    distances,
    duplicates,
    host_selection,
    manual_axes,
    native_kernels,
    refinement,
    selection,
    symmetric_rows,
)
from geom_jax.metrics.neighbours.ranks import count_ranks

DATA_AXIS = "data"
"""The mesh axis the rows are split over by default (geom_jax.sharding.DATA)."""

BLOCK_BYTES = 64 * 2**20
"""Default size of one block of Gram rows (B x N float32): B = 512 at N = 32768,
128 at N = 131072; the host selection's key copy and partition take as much again."""

MIN_BLOCK_ROWS = 64
MAX_BLOCK_ROWS = 2048


def block_rows_for(n, block_rows=None):
    """Rows per block for clouds of n points: block_rows, or BLOCK_BYTES' worth
    (a multiple of 8 in [MIN_BLOCK_ROWS, MAX_BLOCK_ROWS]), at most n."""
    if block_rows is None:
        block_rows = BLOCK_BYTES // (4 * max(int(n), 1))
        block_rows = max(MIN_BLOCK_ROWS, min(MAX_BLOCK_ROWS, block_rows // 8 * 8))
    return int(min(block_rows, n))


def check_block_rows(block_rows):
    if block_rows is not None and (not isinstance(block_rows, int) or block_rows < 1):
        raise ValueError(f"block_rows must be a positive integer or None, got {block_rows!r}")


def _map_blocks(fn, n, block, offset, operands):
    starts = jnp.asarray(chunking.starts(n, block), jnp.int32)
    return chunking.assemble(lax.map(lambda s: fn(offset + s, *operands), starts), n, block)


class LocalRows:
    """All row blocks on the current device (lax.map over blocks)."""

    def __call__(self, fn, n, block, *operands):
        """fn(start, *operands) -> pytree of [block, ...] for rows start..start+block
        (start a traced int32) -> the same pytree [n, ...]."""
        return _map_blocks(fn, n, min(block, n), 0, operands)


LOCAL = LocalRows()


@dataclasses.dataclass(frozen=True)
class ShardedRows:
    """Row blocks split over the mesh axis `axis` inside shard_map.

    Device k handles the rows offset_k .. offset_k + ceil(n / devices), offset_k =
    min(k ceil(n / devices), n - ceil(n / devices)) (so the last ranges overlap
    when the devices do not divide n), from points
    replicated on every device; the per-row results are all-gathered, so the
    caller sees the same [n, ...] arrays as with LOCAL.
    """

    mesh: jax.sharding.Mesh
    axis: str

    def __call__(self, fn, n, block, *operands):
        devices = self.mesh.shape[self.axis]
        # fn computes `block` rows per call: a device's range is at least one block
        # (ranges overlap when the devices times the block exceed n).
        block = min(block, n)
        local = min(n, max(-(-n // devices), block))

        def per_device(*ops):
            k = lax.axis_index(self.axis)
            offset = jnp.minimum(k * local, n - local).astype(jnp.int32)
            mine = _map_blocks(fn, local, block, offset, ops)
            return jax.tree.map(lambda o: lax.all_gather(o, self.axis, tiled=True), mine)

        outs = jax.shard_map(
            per_device,
            mesh=self.mesh,
            in_specs=tuple(P() for _ in operands),
            out_specs=P(),
            check_vma=False,
        )(*operands)

        offsets = np.minimum(np.arange(devices) * local, n - local)
        owner = np.minimum(np.arange(n) // local, devices - 1)
        owner = np.where(offsets[owner] > np.arange(n), owner - 1, owner)
        where = jnp.asarray(owner * local + np.arange(n) - offsets[owner], jnp.int32)
        return jax.tree.map(lambda o: jnp.take(o, where, axis=0), outs)


def centred_points(x, valid):
    """(xc, centre, sq): the cloud x [N, D] centred on the mean of its valid points
    (zero rows at invalid points, as distances.centred_gram), and |xc_i|^2 [N]."""
    x = jnp.where(valid[..., None], x, 0.0)
    count = jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1).astype(x.dtype)
    centre = jnp.sum(x, axis=-2) / count
    xc = jnp.where(valid[..., None], x - centre[..., None, :], 0.0)
    sq = jnp.einsum("...nd,...nd->...n", xc, xc, precision=distances.HIGHEST)
    return xc, centre, sq


def gram_rows(xc, start, block):
    """Rows start..start+block of the centred Gram matrix, [block, N]."""
    rows = lax.dynamic_slice_in_dim(xc, start, block, axis=0)
    return jnp.einsum("nd,md->nm", rows, xc, precision=distances.HIGHEST)


def _row_keys(g, sq, valid_cols, start):
    """sq_j - 2 G_ij [B, N], +inf at excluded columns and at the point itself."""
    b, n = g.shape
    own = (start + jnp.arange(b, dtype=jnp.int32))[:, None] == jnp.arange(n, dtype=jnp.int32)
    return jnp.where(valid_cols[None, :] & ~own, sq[None, :] - 2.0 * g, jnp.inf)


def _xla_select_rows(g, sq, valid_near, valid_rank, start, *, k_near, ranks):
    b = g.shape[0]
    near = jnp.zeros((b, 0), jnp.int32)
    rank = jnp.zeros((b, 0), jnp.int32)
    if k_near:
        _, near = lax.top_k(-_row_keys(g, sq, valid_near, start), k_near)
    if ranks:
        _, top = lax.top_k(-_row_keys(g, sq, valid_rank, start), max(ranks))
        rank = top[:, np.asarray(ranks) - 1]
    return near.astype(jnp.int32), rank.astype(jnp.int32)


def _host_select_rows(g, sq, valid_near, valid_rank, start, *, k_near, ranks):
    b = g.shape[0]
    out = (
        jax.ShapeDtypeStruct((b, k_near), jnp.int32),
        jax.ShapeDtypeStruct((b, len(ranks)), jnp.int32),
    )
    if native_kernels.row_selection_preferred(g.shape[-1], max((k_near,) + ranks)):
        near, rank = native_kernels.select_rows(
            g, sq, valid_near, valid_rank, start, k_near=k_near, ranks=ranks
        )
    else:
        fn = functools.partial(selection.host_select_rows, k_near=k_near, ranks=ranks)
        near, rank = host_selection.host_call(fn, out, g, sq, valid_near, valid_rank, start)
    return manual_axes.like(near, g), manual_axes.like(rank, g)


def select_rows(g, sq, valid_near, valid_rank, start, *, k_near, ranks, method):
    """Selection on Gram rows g [B, N] of the rows start.. (as selection.select_neighbours
    on those rows of the full matrix): (near [B, k_near], ranked [B, #ranks])."""
    xla = functools.partial(_xla_select_rows, k_near=k_near, ranks=ranks)
    host = functools.partial(_host_select_rows, k_near=k_near, ranks=ranks)
    return host_selection.dispatch(method, host, xla, g, sq, valid_near, valid_rank, start)


def select(xc, sq, valid_near, valid_rank, *, k_near, ranks, block, method, rows=LOCAL):
    """Neighbour selection of one cloud without its Gram matrix.

    Args:
      xc: [N, D] centred points (`centred_points`), sq [N] their squared norms.
      valid_near, valid_rank: bool [N] columns allowed in the near list / at the ranks;
        valid_rank None: the same as valid_near.
      k_near: nearest columns per row; ranks: 1-based ranks among valid_rank columns.
      block: rows per block; method: "auto", "host" or "xla"; rows: a RowMap.

    Returns:
      near [N, k_near] int32 in (key, index) order, ranked [N, #ranks] int32,
      near_keys [N, k_near] (sq_j - 2 G_ij of the near candidates, +inf where
      excluded) and near_sq [N, k_near] (their sq_j, 0 where excluded): what
      `refinement.certify` reads.

    With one mask, on one device, on CPU (method "auto" or "host") and where the
    compiled kernels are available, the selection streams over half of the Gram
    matrix (metrics/neighbours/symmetric_rows.py); the results are the same.
    """
    ranks = tuple(int(r) for r in ranks)
    n = xc.shape[0]
    same = valid_rank is None
    if same:
        valid_rank = valid_near
    blocks = functools.partial(_select_blocks, k_near=k_near, ranks=ranks, block=block, rows=rows)
    tile_rows = symmetric_rows.block_for(n, block)
    if (
        same
        and rows is LOCAL
        and method != "xla"
        and symmetric_rows.usable(n, tile_rows, k_near, ranks)
    ):
        stream = functools.partial(
            symmetric_rows.select, k_near=k_near, ranks=ranks, block=tile_rows
        )
        xla = lambda xc, sq, valid: blocks(xc, sq, valid, valid, method="xla")
        near, ranked, near_keys = host_selection.dispatch(method, stream, xla, xc, sq, valid_near)
    else:
        near, ranked, near_keys = blocks(xc, sq, valid_near, valid_rank, method=method)
    own = jnp.arange(n, dtype=jnp.int32)[:, None]
    ok = valid_near[near] & (near != own)
    return near, ranked, near_keys, jnp.where(ok, sq[near], 0.0)


def exact_knn(x, valid, k, *, block, method, rows=LOCAL):
    """(squared distances, indices) [C, N, k] of the k nearest valid neighbours of each
    cloud of x [C, N, D]: `select`'s candidates per cloud, then
    `refinement.rerank_candidates` (as refinement.exact_knn, without the Gram matrix)."""
    n = x.shape[-2]
    xc, _, sq = centred_points(x, valid)
    fn = functools.partial(
        select,
        k_near=refinement.num_candidates(k, n),
        ranks=(),
        block=block,
        method=method,
        rows=rows,
    )
    near = lax.map(lambda a: fn(*a, None)[0], (xc, sq, valid))
    return refinement.rerank_candidates(x, near, valid, k, method)


def _select_blocks(xc, sq, valid_near, valid_rank, *, k_near, ranks, block, method, rows):
    """select's row-blocked pass: every block of rows against all columns."""

    def fn(start, xc, sq, valid_near, valid_rank):
        g = gram_rows(xc, start, block)
        near, ranked = select_rows(
            g, sq, valid_near, valid_rank, start, k_near=k_near, ranks=ranks, method=method
        )
        # the candidates' keys as _row_keys computes them, for those [B, k_near] only
        own = (start + jnp.arange(near.shape[0], dtype=jnp.int32))[:, None]
        ok = valid_near[near] & (near != own)
        near_keys = jnp.where(ok, sq[near] - 2.0 * jnp.take_along_axis(g, near, axis=-1), jnp.inf)
        return near, ranked, near_keys

    return rows(fn, xc.shape[0], block, xc, sq, valid_near, valid_rank)


def nearest_earlier(xc, sq, valid, *, block, rows=LOCAL):
    """Per row i, the valid j < i of smallest key sq_j - 2 G_ij (lowest index on
    ties; 0 where there is none) and whether one exists: [N] int32, bool [N]
    (duplicates.near_duplicates' search, block by block)."""

    def fn(start, xc, sq, valid):
        g = gram_rows(xc, start, block)
        b, n = g.shape
        earlier = jnp.arange(n)[None, :] < (start + jnp.arange(b))[:, None]
        ok = earlier & valid[None, :]
        score = jnp.where(ok, sq[None, :] - 2.0 * g, jnp.inf)
        return jnp.argmin(score, axis=-1).astype(jnp.int32), jnp.any(ok, axis=-1)

    return rows(fn, xc.shape[0], block, xc, sq, valid)


def distinct_points(x, xc, sq, valid, near_keys, tolerance, *, block, rows=LOCAL):
    """Bool [N]: duplicates.distinct_points without the Gram matrix.

    The pre-filter reads each row's nearest valid key (near_keys[:, 0] from
    `select`): when no row is within tolerance * R plus the Gram error bound of
    its nearest point, no two points can be (near-)duplicates and the result is
    `valid`; otherwise exact duplicates are hashed (duplicates.first_occurrence) and
    near-duplicates found by `nearest_earlier` and an exact distance.
    """
    d = x.shape[-1]
    limit = (tolerance**2) * duplicates._sq_radius(x, valid)
    top = jnp.max(jnp.where(valid, sq, 0.0))
    nearest = sq + near_keys[:, 0]
    close = valid & (nearest <= limit + d * duplicates.GRAM_ERROR * (sq + top))

    def full():
        keep = duplicates.first_occurrence(x, valid)
        if tolerance > 0:
            j, has = nearest_earlier(xc, sq, valid, block=block, rows=rows)
            d2 = jnp.sum(jnp.square(x - x[j]), axis=-1)
            keep = keep & ~(valid & has & (d2 <= limit))
        return keep

    return lax.cond(jnp.any(close), full, lambda: valid)


def query_ranks(xc, sq, valid, queries, *, block, rows=LOCAL):
    """rank(i, queries[i, q]) [N, Q] int32 in this cloud, counted block by block:
    from 1, among valid points other than i, in (key, index) order with key(i, j)
    = sq_j - 2 G_ij (ranks.ranks_from_gram's definition and arithmetic)."""
    from_rows = functools.partial(_ranks_in_rows, block=block)
    return rows(from_rows, xc.shape[0], block, xc, sq, valid, queries)


def _ranks_in_rows(start, xc, sq, valid, queries, *, block):
    g = gram_rows(xc, start, block)
    q = jnp.maximum(lax.dynamic_slice_in_dim(queries, start, block, axis=0), 0)
    col_key = sq + jnp.where(valid, 0.0, jnp.inf)
    keys = col_key[None, :] - 2.0 * g
    kq = jnp.take_along_axis(keys, q, axis=-1)
    own = start + jnp.arange(block, dtype=jnp.int32)
    own_key = jnp.take_along_axis(keys, own[:, None], axis=-1)[:, 0]
    return count_ranks(keys, kq, own_key, q, own)


def pair_gram(xc, idx, *, block, rows=LOCAL):
    """G entries [N, k, k] between the neighbours idx [N, k] (>= 0) of each point:
    xc_a . xc_b from the points, a block of rows at a time."""

    def fn(start, xc, idx):
        ids = lax.dynamic_slice_in_dim(idx, start, block, axis=0)
        pts = xc[ids]
        return jnp.einsum("bkd,bld->bkl", pts, pts, precision=distances.HIGHEST)

    return rows(fn, xc.shape[0], block, xc, jnp.maximum(idx, 0))
