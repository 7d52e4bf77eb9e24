"""Exact k-nearest-neighbour index lists of many clouds, and values at the listed pairs.

`neighbour_lists` is the one place where the representational-similarity and
label-overlap measures find neighbours: the exact dense kernels (centred Gram
matrix, selection, refinement by direct differences: `refinement.exact_knn`) one
chunk of clouds at a time up to BLOCKED_ABOVE points per cloud, the row-blocked
kernels (`blocked_rows.select`, then the same refinement; never an N x N matrix)
above it. Both give the same lists.
"""

import functools

import jax.numpy as jnp
from jax import lax

from geom_jax.metrics import chunking
from geom_jax.metrics.neighbours import blocked_rows, distances, manual_axes, refinement

BLOCKED_ABOVE = 4096
"""Points per cloud above which the lists come from blocks of Gram rows, as the geometry
engine's "auto" path (metrics/backends/blocked_context.py: a 4,096-point cloud's Gram
matrix is 64 MiB; 65,536 points would need 16 GiB)."""


def clouds_per_chunk(n_clouds, n):
    """Clouds per chunk so that one chunk's Gram matrices take about chunking.CHUNK_GRAM_BYTES
    (at least one cloud per chunk)."""
    return max(1, min(n_clouds, chunking.CHUNK_GRAM_BYTES // (n * n * 4)))


def map_clouds(fn, chunk, *arrays):
    """fn on chunks of `chunk` clouds of arrays [C, ...] (lax.map), outputs [C, ...].

    A last partial chunk is the final `chunk` clouds, overlapping the previous
    one, so that nothing is padded."""
    c = arrays[0].shape[0]
    if chunk >= c:
        return fn(*arrays)

    def one(start):
        return fn(*(lax.dynamic_slice_in_dim(a, start, chunk, axis=0) for a in arrays))

    out = lax.map(one, jnp.asarray(chunking.starts(c, chunk), jnp.int32))
    return chunking.assemble(out, c, chunk)


def _lists(x, valid, k, selection):
    gram, _ = distances.centred_gram(x, valid)
    _, idx = refinement.exact_knn(x, gram, valid, k, selection)
    return jnp.where(valid[..., None], idx, -1)


def _blocked_lists(x, valid, k, selection):
    block = blocked_rows.block_rows_for(x.shape[-2])
    _, idx = blocked_rows.exact_knn(x, valid, k, block=block, method=selection)
    return jnp.where(valid[..., None], idx, -1)


def neighbour_lists(x, valid, k, selection="auto"):
    """Exact k nearest neighbours (Euclidean) of every point of clouds x [C, N, D].

    Internal, no checks. Above BLOCKED_ABOVE points per cloud, from blocks of Gram
    rows (O(N (block + k)) memory per cloud). Returns int32 [C, N, k]: the point
    itself excluded, only valid columns, ordered by (exact squared distance, index)
    so that ties (exact duplicates) go to the lower index; -1 beyond the valid
    neighbours and in the rows of invalid points.
    """
    n = x.shape[-2]
    if n > BLOCKED_ABOVE:
        return _blocked_lists(x, valid, k, selection)
    fn = functools.partial(_lists, k=k, selection=selection)
    return map_clouds(fn, clouds_per_chunk(x.shape[0], n), x, valid)


def listed_inner_products(x, idx):
    """x_i . x_j [C, N, K] for j = idx[c, i, :] (clipped to >= 0), float32 HIGHEST.

    Per cloud a loop over the K slots gathers one [N, D] block and reduces it
    with a matrix-vector product (as refinement's direct differences)."""
    k = idx.shape[-1]

    def cloud(args):
        xc, ic = args
        ones = jnp.ones((xc.shape[-1],), xc.dtype)

        def slot(j, acc):
            other = jnp.take(xc, jnp.maximum(ic[:, j], 0), axis=0)
            return acc.at[j].set(jnp.dot(xc * other, ones, precision=distances.HIGHEST))

        init = manual_axes.like(jnp.zeros((k, xc.shape[0]), xc.dtype), xc)
        return lax.fori_loop(0, k, slot, init).T

    return lax.map(cloud, (x, idx))


def reciprocated(idx):
    """Bool [C, N, K]: i is in the list of j = idx[c, i, s] (False where idx < 0)."""
    n = idx.shape[-2]
    rows = jnp.arange(n, dtype=idx.dtype)[:, None, None]

    def cloud(ic):
        back = jnp.take(ic, jnp.maximum(ic, 0), axis=0)
        return jnp.any(back == rows, axis=-1) & (ic >= 0)

    return lax.map(cloud, idx)
