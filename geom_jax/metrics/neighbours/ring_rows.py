"""Exact neighbour kernels with each cloud's points split over a mesh axis: a ring.

Device r of the axis holds rows r w .. (r + 1) w - 1 of every cloud (w = ceil(N /
devices); the cloud is padded with invalid points to devices x w) and never the
others: their blocks travel around the ring (``lax.ppermute`` inside
``jax.shard_map``), one step per device, and each device merges every visiting block
into a running result for its own rows, a tile of B rows at a time (the selection's
running lists: NumPy on the host on CPU, lax.top_k and lax.sort elsewhere). Memory per
device is O(w (D + m) + B w), m the longest per-row list, where the replicated
``blocked_rows.ShardedRows`` holds O(N D + B N).

Each kernel computes what its ``blocked_rows`` counterpart computes: the same keys
sq_j - 2 G_ij (HIGHEST-precision products of the centred points, +inf at invalid
columns and at the point itself), the same (key, global column) order, the same exact
direct differences. The centre is a sum over the devices' rows, so the keys may differ
from one device's by float32 rounding (an ulp); exact re-ranking makes the neighbour
lists equal anyway, while the Gram-ranked columns at GRIDE's high ranks may swap
where two keys lie within an ulp.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from geom_jax.metrics.neighbours import (
    distances,
    duplicates,
    host_selection,
    manual_axes,
    refinement,
)
from geom_jax.metrics.neighbours.packing import low_int32, pack, unpack_values
from geom_jax.metrics.neighbours.ranks import count_before, ranks_from_counts

TILE_BYTES = 2 * 2**20
"""Default size of one tile of Gram entries (B own rows x w visiting columns, float32):
B = 64 at w = 8192 (65,536 points on 8 devices)."""

MAX_TILE_ROWS = 2048

_NO_COLUMN = np.iinfo(np.int32).max
"""Column of an empty slot of a running list: after every real column in (key, column)
order."""


def tile_rows_for(width, block_rows=None):
    """Own rows per tile against a visiting block of ``width`` points: block_rows, or
    TILE_BYTES' worth (a multiple of 8, at most MAX_TILE_ROWS), at most width."""
    if block_rows is None:
        block_rows = max(8, min(MAX_TILE_ROWS, TILE_BYTES // (4 * max(width, 1)) // 8 * 8))
    return int(min(block_rows, width))


@dataclasses.dataclass(frozen=True)
class RingRows:
    """Each cloud's points split over the mesh axis ``axis``, blocks passed around a ring.

    Calling it runs a per-device function inside shard_map on arrays [C, N, ...] whose
    points axis (1) is split over the axis (padded with invalid points to a multiple
    of the devices), and returns its per-row outputs [C, N, ...], split the same way.
    """

    mesh: jax.sharding.Mesh
    axis: str

    @property
    def devices(self):
        return self.mesh.shape[self.axis]

    def width(self, n):
        """Points of an n-point cloud on each device."""
        return -(-n // self.devices)

    def constrain(self, a, points_axis):
        """``a`` with its axis ``points_axis`` split over the ring's devices."""
        spec = [None] * a.ndim
        spec[points_axis] = self.axis
        return lax.with_sharding_constraint(a, NamedSharding(self.mesh, P(*spec)))

    def __call__(self, fn, n, points, shared=()):
        """fn(ring, *blocks, *shared) -> a pytree of [C, w, ...] on each device, blocks
        [C, w, ...] the device's rows of ``points`` ([C, N, ...], padded with zeros /
        False) and ``shared`` whole on every device -> the same pytree [C, N, ...]."""
        w = self.width(n)
        pad = self.devices * w - n
        if pad:
            points = [jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2)) for a in points]
        split = P(None, self.axis)
        out = jax.shard_map(
            lambda *ops: fn(_Ring(self.axis, self.devices, w), *ops),
            mesh=self.mesh,
            in_specs=(split,) * len(points) + (P(),) * len(shared),
            out_specs=split,
            check_vma=False,
        )(*points, *shared)
        return jax.tree.map(lambda o: o[:, :n], out) if pad else out


@dataclasses.dataclass(frozen=True)
class _Ring:
    """One device's view inside shard_map: the axis, its size and the rows per device."""

    axis: str
    devices: int
    width: int

    @property
    def offset(self):
        """Global index of this device's first row."""
        return (lax.axis_index(self.axis) * self.width).astype(jnp.int32)

    def visit(self, step, state, visiting, after=None):
        """state = step(offset, block, state) for every device's block in turn (this
        device's own first), ``block`` the pytree ``visiting`` of that device and
        ``offset`` its first global row; the blocks move one device on per step (the
        last move brings them home, unused). The loop's copy of this device's block
        waits for ``after`` (indices >= 0 the steps read: the pass's partners)."""
        perm = [(i, (i + 1) % self.devices) for i in range(self.devices)]
        me = lax.axis_index(self.axis)
        if after is not None:
            visiting = _when_ready(visiting, after)

        def body(s, carry):
            state, block = carry
            offset = (((me - s) % self.devices) * self.width).astype(jnp.int32)
            state = step(offset, block, state)
            return state, jax.tree.map(lambda a: lax.ppermute(a, self.axis, perm), block)

        return lax.fori_loop(0, self.devices, body, (state, visiting))[0]


def _when_ready(block, after):
    """block, read again once ``after`` (indices >= 0, the pass's partners) exists.

    XLA's CPU scheduler makes a ring loop's copy of the device's own block as soon as
    the block exists and holds it through every earlier pass (8 MiB a pass at 65,536
    x 256 on 8 devices); a select on the partners makes the copy wait for them. Every
    caller's indices are >= 0 by construction (clipped, or real columns): the other
    branch, zeros, is never taken."""
    ready = jnp.all(after >= 0)
    return jax.tree.map(lambda a: jnp.where(ready, a, jnp.zeros_like(a)), block)


def _over_tiles(update, width, block, state):
    """state (a pytree of [width, ...]) with rows start..start + block replaced by
    update(start, those rows), tile after tile; the last tile, when block does not
    divide width, overlaps the one before and leaves the rows already done alone."""

    def body(t, state):
        start = jnp.minimum(t * block, width - block)
        old = jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, block), state)
        new = update(start, old)
        fresh = start + jnp.arange(block) >= t * block
        keep = lambda a, b: jnp.where(fresh.reshape((block,) + (1,) * (a.ndim - 1)), a, b)
        put = lambda a, b: lax.dynamic_update_slice_in_dim(a, b, start, 0)
        return jax.tree.map(put, state, jax.tree.map(keep, new, old))

    return lax.fori_loop(0, -(-width // block), body, state)


def _per_cloud(fn, *arrays):
    """fn on each cloud (leading axis C) in turn, outputs stacked [C, ...]; one cloud
    (a dataset-scale run) is passed as it is, without lax.map's copy of its slice."""
    if arrays[0].shape[0] == 1:
        return jax.vmap(fn)(*arrays)
    return lax.map(lambda a: fn(*a), arrays)


def _centred(x, centre, valid):
    """Rows x [R, D] centred on centre [D], zero at invalid points: blocked_rows.
    centred_points' arithmetic, so that the Gram entries are the blocked path's."""
    return jnp.where(valid[:, None], x - centre, 0.0)


def _gram_tile(x, centre, valid, start, block, other):
    """Centred Gram entries [block, w] of own rows start.. with the centred block other."""
    tile = lambda a: lax.dynamic_slice_in_dim(a, start, block)
    rows = _centred(tile(x), centre, tile(valid))
    return jnp.einsum("nd,md->nm", rows, other, precision=distances.HIGHEST)


def _centred_block(x, centre, sq, valid, allowed):
    """What a Gram pass sends around the ring: the device's centred rows (zero at its
    invalid points), their squared norms and which are allowed as columns."""
    return _centred(x, centre, valid), sq, allowed


def _xla_merge(keys, offset, listed_keys, listed_cols):
    """The m = listed.shape[-1] smallest (key, column) pairs of each row among its running
    list listed [B, m] and the keys [B, w] of a block whose first column is offset:
    lax.top_k of the block (equal keys lower column first), then lax.sort on (key,
    column)."""
    m = listed_keys.shape[-1]
    neg, local = lax.top_k(-keys, min(m, keys.shape[-1]))
    merged = lax.sort(
        (
            jnp.concatenate([listed_keys, -neg], axis=-1),
            jnp.concatenate([listed_cols, offset + local.astype(jnp.int32)], axis=-1),
        ),
        dimension=-1,
        num_keys=2,
    )
    return merged[0][:, :m], merged[1][:, :m]


def _host_merge_rows(keys, offset, listed_keys, listed_cols):
    """_xla_merge in NumPy: (key, column) packed into uint64 (packing.pack), one
    partition of the running list and the block together, then a sort of the m kept."""
    b, w = keys.shape
    m = listed_keys.shape[-1]
    packed = np.empty((b, m + w), np.uint64)
    packed[:, :m] = pack(listed_keys, listed_cols)
    packed[:, m:] = pack(keys, np.arange(offset, offset + w, dtype=np.int32))
    packed = np.partition(packed, m - 1, axis=-1)[:, :m]
    packed.sort(axis=-1)
    return unpack_values(packed >> np.uint64(32)), low_int32(packed)


def _host_merge_blocks(keys, offset, listed_keys, listed_cols):
    """_host_merge_rows over blocks of rows, one host thread each (NumPy releases the
    GIL); keys [..., B, w] and offset [...] (a leading batch under vmap)."""
    lead, (b, w), m = offset.shape, keys.shape[-2:], listed_keys.shape[-1]
    keys, offset = keys.reshape(-1, b, w), offset.reshape(-1)
    listed_keys, listed_cols = listed_keys.reshape(-1, b, m), listed_cols.reshape(-1, b, m)
    rows = max(1, -(-b // (os.cpu_count() or 1)))
    items = [(c, a) for c in range(len(offset)) for a in range(0, b, rows)]
    part = lambda item: _host_merge_rows(
        keys[item[0], item[1] : item[1] + rows],
        int(offset[item[0]]),
        listed_keys[item[0], item[1] : item[1] + rows],
        listed_cols[item[0], item[1] : item[1] + rows],
    )
    parts = host_selection.thread_map(part, items)
    return tuple(np.concatenate(p).reshape(lead + (b, m)) for p in zip(*parts))


def _host_merge(keys, offset, listed_keys, listed_cols):
    """_xla_merge on the host, where XLA:CPU's lax.sort takes ~100x the time of the
    tile's Gram product (the same pairs: both order by (key, column))."""
    out = (
        jax.ShapeDtypeStruct(listed_keys.shape, listed_keys.dtype),
        jax.ShapeDtypeStruct(listed_cols.shape, jnp.int32),
    )
    merged = host_selection.host_call(
        _host_merge_blocks, out, keys, offset, listed_keys, listed_cols
    )
    return tuple(manual_axes.like(a, keys) for a in merged)


def select(rows, x, centre, sq, valid, allowed, *, k_near, ranks, block, method="auto"):
    """blocked_rows.select (one mask for both lists) on the ring.

    Args:
      rows: a RingRows; x [C, N, D] points, valid bool [C, N] the valid ones, centre
        [C, D] their centre and sq [C, N] the centred squared norms
        (blocked_rows.centred_points); allowed bool [C, N] the columns allowed.
      k_near: nearest columns per row; ranks: 1-based ranks; block: own rows per tile;
        method: "auto", "host" or "xla", how each tile is merged into the running
        lists (the same lists).

    Returns:
      near [C, N, k_near] int32 in (key, index) order, ranked [C, N, #ranks] int32 and
      near_keys [C, N, k_near] (+inf where excluded), equal to blocked_rows.select's:
      each device keeps the m = max(k_near, max(ranks)) smallest (key, column) pairs
      of its rows, merged with each visiting block's (`_xla_merge`, or `_host_merge`).
    """
    ranks = tuple(int(r) for r in ranks)
    m = max((k_near,) + ranks)
    n = x.shape[-2]

    def cloud(ring, x, sq, valid, allowed, centre):
        w = ring.width
        own = ring.offset + jnp.arange(block, dtype=jnp.int32)

        def step(offset, visiting, state):
            vxc, vsq, vvalid = visiting
            cols = offset + jnp.arange(w, dtype=jnp.int32)

            def update(start, listed):
                g = _gram_tile(x, centre, valid, start, block, vxc)
                ok = vvalid[None, :] & ((own + start)[:, None] != cols[None, :])
                keys = jnp.where(ok, vsq[None, :] - 2.0 * g, jnp.inf)
                merge = (_host_merge, _xla_merge)
                return host_selection.dispatch(method, *merge, keys, offset, *listed)

            return _over_tiles(update, w, block, state)

        empty = (jnp.full((w, m), jnp.inf, x.dtype), jnp.full((w, m), _NO_COLUMN, jnp.int32))
        keys, cols = ring.visit(step, empty, _centred_block(x, centre, sq, valid, allowed))
        ranked = cols[:, np.asarray(ranks, np.int64) - 1] if ranks else cols[:, :0]
        return cols[:, :k_near], ranked, keys[:, :k_near]

    def per_device(ring, *ops):
        return _per_cloud(lambda *a: cloud(ring, *a), *ops)

    return rows(per_device, n, [x, sq, valid, allowed], [centre])


def _partner_values(ring, own, visiting, cols, fn, fill, block):
    """out[r, j] = fn(visiting block, own rows, partner rows) for the partner cols[r, j]
    (global index >= 0) of each own row, read from the device that holds it: one pass
    around the ring. fn(table [w, D], own [B, D], local [B, M]) -> [B, M]."""
    w, mm = cols.shape

    def step(offset, table, out):
        def update(start, done):
            local = lax.dynamic_slice_in_dim(cols, start, block) - offset
            inside = (local >= 0) & (local < w)
            mine = lax.dynamic_slice_in_dim(own, start, block)
            return jnp.where(inside, fn(table, mine, jnp.clip(local, 0, w - 1)), done)

        return _over_tiles(update, w, block, out)

    return ring.visit(step, jnp.full((w, mm), fill, fill.dtype), visiting, after=cols)


def _candidate_sq(ring, x, valid, cols, block, masked=True):
    """Exact |x_i - x_j|^2 [w, M] of the partners cols of each own row, by direct
    differences (refinement.slot_sq_distances' arithmetic); masked: +inf where the
    partner is not a valid point or is the row itself."""
    if not masked:
        return _partner_values(
            ring, x, x, cols, refinement.slot_sq_distances, jnp.zeros((), x.dtype), block
        )

    def allowed_sq(table, own, local):
        points, ok = table
        d2 = refinement.slot_sq_distances(points, own, local)
        return jnp.where(jnp.take(ok, local, axis=0), d2, jnp.inf)

    fill = jnp.asarray(jnp.inf, x.dtype)
    d2 = _partner_values(ring, x, (x, valid), cols, allowed_sq, fill, block)
    own = ring.offset + jnp.arange(ring.width, dtype=jnp.int32)
    return jnp.where(cols != own[:, None], d2, jnp.inf)


def candidate_sq_distances(rows, x, valid, idx, *, block, masked=True):
    """refinement.refine_candidates on the ring: exact squared distances [C, N, M] of
    the candidates idx [C, N, M] (>= 0) of each point of clouds x [C, N, D]; +inf where
    the candidate is not a valid column or is the point itself (masked=False: the raw
    distances, as CertifiedKnn.sq_at's ``also``)."""

    def cloud(ring, x, valid, idx):
        return _candidate_sq(ring, x, valid, idx, block, masked)

    def per_device(ring, x, valid, idx):
        return _per_cloud(lambda *a: cloud(ring, *a), x, valid, idx)

    return rows(per_device, x.shape[-2], [x, valid, jnp.maximum(idx, 0)])


def rerank(rows, x, near, valid, k, *, block, rows_valid=None):
    """refinement.rerank_candidates on the ring: the k nearest of the candidates near
    [C, N, M] of clouds x [C, N, D] by (exact distance, index) -> (squared distances,
    indices) [C, N, k], (+inf, -1) beyond the valid neighbours. With rows_valid [C, N],
    also in the rows of its invalid points (refinement.certify's lists). The order is
    refinement.sort_candidates' (squared distances are never -0.0 or NaN), by lax.sort,
    which needs no [N, M, M] comparison table."""
    rows_valid = jnp.ones_like(valid) if rows_valid is None else rows_valid

    def cloud(ring, x, valid, near, own_valid):
        d2 = _candidate_sq(ring, x, valid, near, block)
        sq, idx = (a[:, :k] for a in lax.sort((d2, near), dimension=-1, num_keys=2))
        sq = jnp.where(own_valid[:, None], sq, jnp.inf)
        return sq, jnp.where(jnp.isfinite(sq), idx, -1)

    def per_device(ring, *ops):
        return _per_cloud(lambda *a: cloud(ring, *a), *ops)

    return rows(per_device, x.shape[-2], [x, valid, near, rows_valid])


def _first_occurrence_partners(rows, x, valid):
    """(has, partner) [C, N]: per point, whether the point before it in
    duplicates.first_occurrence's (invalid, hash, index) order is a valid point with
    the same hashes, and which it is. The hashes [C, N] are gathered, never the points."""

    def per_device(ring, x, valid):
        n_all = ring.devices * ring.width
        h1, h2 = duplicates._row_hashes(x)
        gather = lambda a: lax.all_gather(a, ring.axis, axis=1, tiled=True)
        invalid = gather((~valid).astype(jnp.int32))
        idx = jnp.broadcast_to(jnp.arange(n_all, dtype=jnp.int32), invalid.shape)
        inv_s, h1_s, h2_s, idx_s = lax.sort(
            (invalid, gather(h1), gather(h2), idx), dimension=-1, num_keys=4
        )
        same_hash = (
            (inv_s[:, 1:] == 0)
            & (inv_s[:, :-1] == 0)
            & (h1_s[:, 1:] == h1_s[:, :-1])
            & (h2_s[:, 1:] == h2_s[:, :-1])
        )
        _, pos = lax.sort((idx_s, idx), dimension=-1, num_keys=1)
        pos = lax.dynamic_slice_in_dim(pos, ring.offset, ring.width, axis=1)
        before = jnp.maximum(pos - 1, 0)
        has = (pos > 0) & jnp.take_along_axis(same_hash, before, axis=-1)
        return has, jnp.take_along_axis(idx_s, before, axis=-1)

    return rows(per_device, x.shape[-2], [x, valid])


def _equal_rows(table, own, local):
    return jnp.all(jnp.take(table, local[:, 0], axis=0) == own, axis=-1)[:, None]


def _row_sq_distance(table, own, local):
    return jnp.sum(jnp.square(own - jnp.take(table, local[:, 0], axis=0)), axis=-1)[:, None]


def _partner_pass(rows, x, partner, fn, fill, block):
    """fn's value [C, N] for one partner per point of clouds x [C, N, D]."""

    def per_device(ring, x, partner):
        one = lambda x, p: _partner_values(ring, x, x, p[:, None], fn, fill, block)[:, 0]
        return _per_cloud(one, x, partner)

    return rows(per_device, x.shape[-2], [x, partner])


def first_occurrence(rows, x, valid, *, block):
    """duplicates.first_occurrence on the ring: bool [C, N], valid points with no
    identical valid point at a lower index; the coordinates of a point and of its
    predecessor in hash order are compared where they meet on the ring."""
    has, partner = _first_occurrence_partners(rows, x, valid)

    def compare():
        same = _partner_pass(rows, x, partner, _equal_rows, jnp.asarray(False), block)
        return valid & ~(has & same)

    return lax.cond(jnp.any(has), compare, lambda: valid)


def nearest_earlier(rows, x, centre, sq, valid, *, block):
    """blocked_rows.nearest_earlier on the ring: per row i, the valid j < i of smallest
    key sq_j - 2 G_ij (lowest index on ties; 0 where there is none) [C, N] int32, and
    whether one exists, bool [C, N]: a running arg-min over the visiting blocks."""

    def cloud(ring, x, sq, valid, centre):
        w = ring.width
        own = ring.offset + jnp.arange(block, dtype=jnp.int32)

        def step(offset, visiting, state):
            vxc, vsq, vvalid = visiting
            cols = offset + jnp.arange(w, dtype=jnp.int32)

            def update(start, best):
                score_b, arg_b, has_b = best
                g = _gram_tile(x, centre, valid, start, block, vxc)
                ok = (cols[None, :] < (own + start)[:, None]) & vvalid[None, :]
                score = jnp.where(ok, vsq[None, :] - 2.0 * g, jnp.inf)
                arg = jnp.argmin(score, axis=-1).astype(jnp.int32)
                low = jnp.take_along_axis(score, arg[:, None], axis=-1)[:, 0]
                arg = offset + arg
                better = (low < score_b) | ((low == score_b) & (arg < arg_b))
                return (
                    jnp.where(better, low, score_b),
                    jnp.where(better, arg, arg_b),
                    has_b | jnp.any(ok, axis=-1),
                )

            return _over_tiles(update, w, block, state)

        empty = (
            jnp.full((w,), jnp.inf, x.dtype),
            jnp.full((w,), _NO_COLUMN, jnp.int32),
            jnp.zeros((w,), bool),
        )
        _, arg, has = ring.visit(step, empty, _centred_block(x, centre, sq, valid, valid))
        return arg, has

    def per_device(ring, *ops):
        return _per_cloud(lambda *a: cloud(ring, *a), *ops)

    return rows(per_device, x.shape[-2], [x, sq, valid], [centre])


def distinct_points(rows, x, centre, sq, valid, near_keys, tolerance, *, block):
    """blocked_rows.distinct_points on the ring: bool [C, N], first occurrences of
    clouds x [C, N, D] without their (near-)duplicates, from the same pre-filter on
    each row's nearest key near_keys[..., 0]; no device holds another's points."""
    d = x.shape[-1]
    limit = (tolerance**2) * duplicates._sq_radius(x, valid)[:, None]
    top = jnp.max(jnp.where(valid, sq, 0.0), axis=-1, keepdims=True)
    nearest = sq + near_keys[..., 0]
    close = valid & (nearest <= limit + d * duplicates.GRAM_ERROR * (sq + top))

    def full():
        keep = first_occurrence(rows, x, valid, block=block)
        if tolerance > 0:
            j, has = nearest_earlier(rows, x, centre, sq, valid, block=block)
            zero = jnp.zeros((), x.dtype)
            d2 = _partner_pass(rows, x, j, _row_sq_distance, zero, block)
            keep = keep & ~(valid & has & (d2 <= limit))
        return keep

    return lax.cond(jnp.any(close), full, lambda: valid)


def query_ranks(rows, x, centre, sq, valid, queries, *, block):
    """blocked_rows.query_ranks on the ring: rank(i, queries[i, q]) [C, N, Q] int32,
    from 1, among valid points other than i, in (key, index) order. One pass around
    the ring reads each query's key (and each row's own) from the block that holds
    it, a second counts the columns before it (ranks.count_before)."""

    def cloud(ring, x, sq, valid, queries, centre):
        w, nq = queries.shape
        own = ring.offset + jnp.arange(w, dtype=jnp.int32)
        q = jnp.maximum(queries, 0)

        def keys_of(start, offset, visiting):
            vxc, vsq, vvalid = visiting
            col_key = vsq + jnp.where(vvalid, 0.0, jnp.inf)
            return col_key[None, :] - 2.0 * _gram_tile(x, centre, valid, start, block, vxc)

        def read(offset, visiting, state):
            def update(start, found):
                kq, own_key = found
                keys = keys_of(start, offset, visiting)
                local = lax.dynamic_slice_in_dim(q, start, block) - offset
                inside = (local >= 0) & (local < w)
                kq = jnp.where(
                    inside, jnp.take_along_axis(keys, jnp.clip(local, 0, w - 1), axis=-1), kq
                )
                mine = lax.dynamic_slice_in_dim(own, start, block)[:, None] - offset
                here = jnp.take_along_axis(keys, jnp.clip(mine, 0, w - 1), axis=-1)[:, 0]
                own_key = jnp.where((mine[:, 0] >= 0) & (mine[:, 0] < w), here, own_key)
                return kq, own_key

            return _over_tiles(update, w, block, state)

        empty = (jnp.zeros((w, nq), x.dtype), jnp.zeros((w,), x.dtype))
        visiting = _centred_block(x, centre, sq, valid, valid)
        kq, own_key = ring.visit(read, empty, visiting, after=q)

        def count(offset, visiting, counted):
            cols = (offset + jnp.arange(w, dtype=jnp.int32)).astype(jnp.float32)

            def update(start, done):
                keys = keys_of(start, offset, visiting)
                kq_t = lax.dynamic_slice_in_dim(kq, start, block)
                q_t = lax.dynamic_slice_in_dim(q, start, block)
                return done + count_before(keys, kq_t, q_t, cols)

            return _over_tiles(update, w, block, counted)

        counted = ring.visit(count, jnp.zeros((w, nq), jnp.float32), visiting, after=q)
        return ranks_from_counts(counted, kq, own_key, q, own)

    def per_device(ring, *ops):
        return _per_cloud(lambda *a: cloud(ring, *a), *ops)

    return rows(per_device, x.shape[-2], [x, sq, valid, queries], [centre])
