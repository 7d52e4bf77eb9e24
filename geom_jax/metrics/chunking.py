"""Equal chunks along a leading axis, the last one overlapping instead of padded.

Layers (backends.dense_context.map_chunks), clouds (neighbours.neighbour_lists) and
rows of a blocked cloud (neighbours.blocked_rows) are all processed this way: chunks
of ``chunk`` items at :func:`starts`, a partial last chunk taken as the final
``chunk`` items (overlapping the one before, so no padded copy is ever made), and
the per-chunk outputs put back in order by :func:`assemble`.
"""

import jax
import jax.numpy as jnp

CHUNK_GRAM_BYTES = 8 * 2**20
"""Gram-matrix bytes per chunk of layers or clouds: small enough for the allocator to
reuse buffers between chunks (larger ones are fresh mmaps, page-faulted on every
call) and to bound memory, large enough to amortise per-chunk overhead."""


def starts(n, chunk):
    """Starts of the chunks of ``chunk`` items covering 0..n (a partial last chunk
    starts at n - chunk)."""
    n_full, rem = divmod(n, chunk)
    return [i * chunk for i in range(n_full)] + ([n - chunk] if rem else [])


def assemble(outs, n, chunk):
    """Per-chunk outputs [n_chunks, chunk, ...] (a pytree) -> [n, ...]: the
    overlapping last chunk contributes its final items only."""
    n_full, rem = divmod(n, chunk)

    def items(o):
        full = o[:n_full].reshape((n_full * chunk,) + o.shape[2:])
        return jnp.concatenate([full, o[-1, chunk - rem :]], axis=0) if rem else full

    return jax.tree.map(items, outs)
