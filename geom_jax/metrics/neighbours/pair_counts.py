"""Exact counts of the pairs closer than given radii, one block of rows at a time.

For each row i of a block and each radius r_t: #{j valid, j != i : |x_i - x_j| < r_t},
with |x_i - x_j| the square root of the direct-difference squared distance the exact
neighbour lists hold (refinement.slot_sq_distances), so that a radius read off those
lists (a neighbour's distance, a median of them) is compared with the very values it
came from. The block's centred Gram rows settle every pair whose key sq_i + sq_j - 2 G_ij
lies farther from r_t^2 than the float32 error bound of refinement.CERTIFY_FACTOR (plus
a few ulps of r_t^2 for the rounding of the radius and of the root); the pairs inside
that window are refined by direct differences, PAIR_ROUND per row and round, until none
is left. Memory O(block x N); the blocks are mapped by a context's ``map_rows``.
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.metrics.neighbours import blocked_rows, refinement

PAIR_ROUND = 32
"""Undecided pairs of a row refined per round of the window's loop."""

EPS = 2.0**-24


def count_closer(start, block, x, xc, sq, valid, radii):
    """Pairs closer than each radius, rows start..start + block of one cloud.

    Args:
      start: first row (traced int32); block: rows (static).
      x: [N, D] the points (the direct differences are taken on them); xc, sq: the
        centred points and their squared norms (blocked_rows.centred_points).
      valid: bool [N]; radii: [T] positive radii.

    Returns:
      int32 [block, T]: #{j valid, j != i : sqrt(|x_i - x_j|^2) < r_t}, 0 for invalid rows.
    """
    n, d = x.shape
    g = blocked_rows.gram_rows(xc, start, block)
    own = start + jnp.arange(block, dtype=jnp.int32)
    sq_rows = lax.dynamic_slice_in_dim(sq, start, block)
    valid_rows = lax.dynamic_slice_in_dim(valid, start, block)
    pair = valid_rows[:, None] & valid[None, :] & (own[:, None] != jnp.arange(n)[None, :])
    key = sq_rows[:, None] + sq[None, :] - 2.0 * g
    top = jnp.max(jnp.where(valid, sq, 0.0))
    tau = refinement.CERTIFY_FACTOR * np.sqrt(d) * EPS * 2.0 * (sq_rows + top)
    r2 = radii * radii
    margin = tau[:, None] + 8.0 * EPS * r2  # [B, T]

    def window(keys):  # keys [B, M] -> bool [B, M, T]: undecided for radius t
        return jnp.abs(keys[..., None] - r2) <= margin[:, None, :]

    below = [pair & (key < r2[t] - margin[:, t : t + 1]) for t in range(radii.shape[0])]
    counts = jnp.stack([jnp.sum(b, axis=-1, dtype=jnp.int32) for b in below], axis=-1)
    undecided = pair & jnp.any(window(key), axis=-1)
    points = lax.dynamic_slice_in_dim(x, start, block)
    width = min(PAIR_ROUND, n)
    rows = jnp.arange(block)[:, None]

    def refine(state):
        undecided, counts = state
        _, cols = lax.top_k(undecided.astype(jnp.float32), width)
        hit = jnp.take_along_axis(undecided, cols, axis=-1)[..., None]
        near = window(jnp.take_along_axis(key, cols, axis=-1))
        dist = jnp.sqrt(refinement.slot_sq_distances(x, points, cols))
        closer = hit & near & (dist[..., None] < radii)
        counts = counts + jnp.sum(closer, axis=-2, dtype=jnp.int32)
        return undecided.at[rows, cols].set(False), counts

    _, counts = lax.while_loop(lambda s: jnp.any(s[0]), refine, (undecided, counts))
    return counts
