"""Exact neighbour selection from half of the Gram matrix, streamed tile by tile (CPU).

The cloud's rows are cut into nb blocks of B (padded with invalid rows). Step I
computes one tile, the Gram entries between block I and the blocks I, I + 1, ...,
I + nb // 2 (mod nb): [B, (nb // 2 + 1) B], one HIGHEST-precision product. Its
rows feed the selection of block I's rows; its off-diagonal blocks, transposed,
feed the rows of blocks I + 1 .. I + h' (h' = nb // 2, less one when nb is even,
where the block at distance nb / 2 is computed by both ends). Every unordered
pair of blocks is thus computed once (twice only at distance nb / 2 for even nb),
(nb // 2 + 1) / nb of the Gram matrix instead of all of it.

Selection streams: each row keeps a buffer of at most ``cap`` candidates packed as
(key bits, column) and a threshold, the m-th smallest of its last compaction; a
tile's candidate enters only below it, and a full buffer is compacted to its m
smallest (metrics/neighbours/native/streaming_select.cc, an XLA FFI custom call that
updates the state in place). So no row waits for all of its N keys, the tile's
selection reads it once while it is in cache, and the state is O(N cap) (8 (cap + 2)
bytes per row). The keys are the host selection's sq_j / 2 - G_ij, so the order
(and the (key, column) tie-break) is that of metrics/neighbours/selection.py; the
Gram entries come from another blocking of the same product, so they can differ
from the row-blocked path's by an ulp, which `refinement.certify` absorbs for the
neighbour lists (exact either way) and GRIDE's high ranks feel at ~1e-7.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.metrics.neighbours import distances, native_kernels

STATE_BYTES = 2**30
"""Largest per-cloud selection state (8 (cap + 2) bytes per row) the streaming path
takes: 539 MB at N = 131,072 with m = 256 (GRIDE range 256); beyond it (range 8,192 at
that N would need 17 GB) callers keep the row-blocked path."""


def state_bytes(n, block, m):
    nb = -(-n // block)
    return nb * block * (native_kernels.capacity(m) + 2) * 8


def usable(n, block, k_near, ranks):
    m = max((k_near,) + tuple(ranks))
    return state_bytes(n, block, m) <= STATE_BYTES and native_kernels.for_cpu()


MIN_BLOCKS = 16
"""Blocks the cloud is cut into at least (block_for): a tile covers (nb // 2 + 1) / nb of
the Gram matrix, 9/16 at 16 blocks, 3/4 at 4 (the row-blocked default's 2,048 rows at
N = 8,192)."""


def block_for(n, block):
    """Rows per block of the streaming path: at most `block`, and small enough for
    MIN_BLOCKS blocks (a multiple of 8, at least blocked_rows' 64)."""
    per_block = -(-n // MIN_BLOCKS)
    want = max(64, -(-per_block // 8) * 8)
    return int(min(block, want))


def tiling(n, block):
    """(nb, n_pad, width): blocks of `block` rows, padded rows, columns of a tile."""
    nb = -(-n // block)
    return nb, nb * block, (nb // 2 + 1) * block


def tile_operands(xc, block):
    """(rows [n_pad, D], cols [n_pad + (nb // 2) block, D]): the points padded with zero
    rows, and again with their first nb // 2 blocks appended, so that tile i's columns
    (blocks i .. i + nb // 2 mod nb) are one contiguous slice."""
    nb, n_pad, _ = tiling(xc.shape[0], block)
    rows = jnp.pad(xc, ((0, n_pad - xc.shape[0]), (0, 0)))
    return rows, jnp.concatenate([rows, rows[: (nb // 2) * block]], axis=0)


def tile(rows, cols, i, block, width):
    """Gram tile i [block, width]: block i's rows against its half band of columns."""
    r = lax.dynamic_slice_in_dim(rows, i * block, block, axis=0)
    c = lax.dynamic_slice_in_dim(cols, i * block, width, axis=0)
    return jnp.einsum("nd,md->nm", r, c, precision=distances.HIGHEST)


def select(xc, sq, valid, *, k_near, ranks, block):
    """Neighbour selection of one cloud from half of its Gram matrix (CPU only).

    Args:
      xc: [N, D] centred points, sq [N] their squared norms (blocked_rows.centred_points).
      valid: bool [N] columns allowed (the near lists and the ranks alike).
      k_near: nearest columns per row; ranks: 1-based ranks among valid columns.
      block: rows per block B.

    Returns:
      near [N, k_near] int32 in (key, index) order, ranked [N, #ranks] int32 and
      near_keys [N, k_near] (sq_j - 2 G_ij, +inf where excluded): as
      blocked_rows.select, whose near_sq the caller derives.
    """
    ranks = tuple(int(r) for r in ranks)
    n = xc.shape[0]
    m = max((k_near,) + ranks)
    if m > n:
        raise ValueError(f"cannot select {m} neighbours among N = {n} points")
    native_kernels._require()
    cap = native_kernels.capacity(m)
    nb, n_pad, width = tiling(n, block)
    rows, cols = tile_operands(xc, block)
    sq_p = jnp.pad(sq, (0, n_pad - n))
    valid_p = jnp.pad(valid, (0, n_pad - n))
    stride = 2 + cap
    state = jnp.zeros((n_pad, 2 * stride), jnp.int32).at[:, :2].set(-1)
    thr = jnp.full((n_pad,), jnp.inf, jnp.float32)
    update = jax.ffi.ffi_call(
        "geom_jax_stream_update",
        (
            jax.ShapeDtypeStruct(state.shape, jnp.int32),
            jax.ShapeDtypeStruct(thr.shape, jnp.float32),
        ),
        input_output_aliases={4: 0, 5: 1},
        vmap_method="sequential",
    )
    attrs = dict(
        n=np.int64(n), block=np.int64(block), nblocks=np.int64(nb), m=np.int64(m), cap=np.int64(cap)
    )

    def step(i, carry):
        g = tile(rows, cols, i, block, width)
        return update(g, sq_p, valid_p, jnp.reshape(i, (1,)).astype(jnp.int32), *carry, **attrs)

    state, thr = lax.fori_loop(0, nb, step, (state, thr))
    finish = jax.ffi.ffi_call(
        "geom_jax_stream_finish",
        (
            jax.ShapeDtypeStruct((n_pad, k_near), jnp.int32),
            jax.ShapeDtypeStruct((n_pad, len(ranks)), jnp.int32),
            jax.ShapeDtypeStruct((n_pad, k_near), jnp.float32),
        ),
        vmap_method="sequential",
    )
    near, ranked, near_keys = finish(
        state,
        valid_p,
        n=np.int64(n),
        m=np.int64(m),
        cap=np.int64(cap),
        k_near=np.int64(k_near),
        ranks=np.asarray(ranks, np.int64),
    )
    return near[:n], ranked[:n], near_keys[:n]
