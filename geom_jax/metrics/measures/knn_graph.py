"""Observables of the exact k-nearest-neighbour graph (all valid points, duplicates in).

Reciprocity, k = 1..max_k: out[k-1] = fraction of the edges i -> j (j among
the k nearest neighbours of i, self excluded, ties to the lower index) for
which i is also among the k nearest neighbours of j: networkx ``overall_reciprocity`` of the k-NN
digraph, as in the appendix of the paper (and its code).

Nearest-neighbour similarity: cos(x_i - x_nn1(i), x_i - x_nn2(i)), the
cosine between the directions from a token to its nearest and to its
second-nearest neighbour, as the paper's code computes it; NaN at padding
and where a direction is zero (a duplicate token).
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.metrics import backends, validation
from geom_jax.metrics.declare.observable import Field, Observable, ReportSection
from geom_jax.metrics.declare.options import MAX_K, SELECTION
from geom_jax.metrics.measures.sections import knn_graph as sections
from geom_jax.metrics.neighbours import distances


def reciprocity_from_lists(idx, valid):
    """Reciprocity for k = 1..K from sorted neighbour lists idx [C, N, K] -> [C, K].

    Edge (i, p) -> j = idx[i, p] is reciprocated at k iff k > max(p, q), q the
    position of i in j's list (K if absent); counts for every k at once. The
    positions come from a dense [N, N] table (pos[j, i] = q) for clouds up to
    TABLE_ENTRIES, else from each neighbour's gathered list.
    """
    c, n, k = idx.shape
    ok = idx >= 0
    q = _back_positions(idx) if c * n * n <= TABLE_ENTRIES else _back_positions_gathered(idx)
    q = jnp.where(ok, q, k)
    last = jnp.maximum(jnp.arange(k), q)
    edge = (idx >= 0) & valid[..., None]

    def counts_below(values):
        """[C, K]: entry k-1 = number of edges whose value is < k (histogram, cumsum)."""
        bins = (
            jnp.where(edge, values, k) + (jnp.arange(c, dtype=jnp.int32) * (k + 1))[:, None, None]
        )
        hist = jnp.zeros((c * (k + 1),), jnp.int32).at[bins.reshape(-1)].add(1)
        return jnp.cumsum(hist.reshape(c, k + 1)[:, :k], axis=-1)

    mutual = counts_below(last)
    edges = counts_below(jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), idx.shape))
    return jnp.where(edges > 0, mutual.astype(jnp.float32) / jnp.maximum(edges, 1), jnp.nan)


TABLE_ENTRIES = 2**26
"""Largest [C, N, N] position table (256 MiB of int32) reciprocity builds; larger
clouds (the row-blocked path's) gather each neighbour's list instead."""

GATHER_ROWS = 2048
"""Points per step of the gathered form (their neighbours' lists: GATHER_ROWS K^2 ints)."""


def _back_positions(idx):
    """q [C, N, K]: the position of i in the list of j = idx[i, p] (K if absent), from a
    dense [N, N] table (pos[j, i] = q): N K scatters and gathers instead of gathering
    j's whole list for every edge (N K^2, slow as XLA:CPU gathers are)."""
    c, n, k = idx.shape
    rows = jnp.arange(n, dtype=jnp.int32)[None, :, None]
    base = (jnp.arange(c, dtype=jnp.int32) * (n * n))[:, None, None]
    ok = idx >= 0
    slot = jnp.where(ok, base + rows * n + idx, c * n * n)
    places = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), idx.shape)
    table = jnp.full((c * n * n,), k, jnp.int32)
    table = table.at[slot.reshape(-1)].set(places.reshape(-1), mode="drop", unique_indices=True)
    back = jnp.where(ok, base + jnp.maximum(idx, 0) * n + rows, 0)
    return table[back.reshape(-1)].reshape(idx.shape)


def _back_positions_gathered(idx):
    """As _back_positions, O(N K^2) memory in steps of GATHER_ROWS points: each
    neighbour's list is gathered and searched for the point."""
    c, n, k = idx.shape
    step = min(GATHER_ROWS, n)
    starts = jnp.asarray([min(s, n - step) for s in range(0, n, step)], jnp.int32)

    def per_cloud(lists):
        def rows(start):
            mine = lax.dynamic_slice_in_dim(lists, start, step, axis=0)
            theirs = lists[jnp.maximum(mine, 0)]  # [step, K, K]
            own = (start + jnp.arange(step, dtype=jnp.int32))[:, None, None]
            return jnp.min(jnp.where(theirs == own, jnp.arange(k), k), axis=-1)

        out = lax.map(rows, starts)  # [blocks, step, K]
        where = np.minimum(np.arange(n) // step, len(starts) - 1)
        first = np.asarray([min(s, n - step) for s in range(0, n, step)])
        return out[where, np.arange(n) - first[where]]

    return lax.map(per_cloud, idx)


def _reciprocity(ctx):
    return {
        "reciprocity": reciprocity_from_lists(ctx.knn_idx[..., : ctx.options["max_k"]], ctx.valid)
    }


def reciprocity(x, mask=None, *, max_k=MAX_K.default, selection=SELECTION.default):
    """Reciprocity of the k-NN digraph of each cloud x [..., N, D] -> [..., max_k].

    out[..., k-1] for k = 1..max_k; only points with mask True take part.
    Reference: the paper's appendix; networkx ``overall_reciprocity``.
    """
    x = validation.as_points(x, "x")
    validation.check_max_k(x.shape[-2], max_k)
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask, max_k=max_k)
    valid = jnp.ones(x.shape[:-1], bool) if mask is None else mask
    out = backends.on_points(
        _reciprocity, x, valid, {"max_k": int(max_k), "selection": selection}, knn_k=max_k
    )
    return out["reciprocity"]


RECIPROCITY = Observable(
    name="reciprocity",
    compute=_reciprocity,
    fields=(
        Field("reciprocity", ("k",), "reciprocity of the k-NN graph of layer l, k = index + 1."),
    ),
    consumes=("points", "knn"),
    doc=__doc__,
    reference="the paper's appendix (kNN-graph reciprocity); networkx overall_reciprocity",
    reduce="fraction of reciprocated edges over all valid tokens' k-NN edges",
    options=(MAX_K,),
    knn_k=lambda o: o["max_k"],
    check=lambda o, n: validation.check_max_k(n, o["max_k"]),
    report=(
        ReportSection(
            "kNN-graph reciprocity across layers",
            figure=sections.plot_reciprocity,
            text=sections.reciprocity_text,
            file="reciprocity.png",
        ),
    ),
)


def nn_similarity_from_lists(x, idx, valid, sq=None):
    """Per-token similarity [C, N] from x [C, N, D] and neighbour lists idx [C, N, >=2].

    With the lists' exact squared distances sq [C, N, >=2], a . b = (|a|^2 +
    |b|^2 - |x_nn1 - x_nn2|^2) / 2 needs one difference per token instead of three
    dot products (float32 error ~1e-7 on the cosine).
    """
    hi = distances.HIGHEST
    x1 = jnp.take_along_axis(x, jnp.maximum(idx[..., 0:1], 0), axis=-2)
    x2 = jnp.take_along_axis(x, jnp.maximum(idx[..., 1:2], 0), axis=-2)
    if sq is None:
        a, b = x - x1, x - x2
        ab = jnp.einsum("...d,...d->...", a, b, precision=hi)
        aa = jnp.einsum("...d,...d->...", a, a, precision=hi)
        bb = jnp.einsum("...d,...d->...", b, b, precision=hi)
    else:
        aa, bb = sq[..., 0], sq[..., 1]
        d = x1 - x2
        ab = 0.5 * (aa + bb - jnp.einsum("...d,...d->...", d, d, precision=hi))
    ok = valid & (aa > 0) & (bb > 0) & (idx[..., 1] >= 0)
    return jnp.where(ok, ab / jnp.sqrt(jnp.where(ok, aa * bb, 1.0)), jnp.nan)


def _per_token(ctx):
    return nn_similarity_from_lists(ctx.x, ctx.knn_idx[..., :2], ctx.valid, ctx.knn_sq_at((0, 1)))


def _nn_similarity(ctx):
    sim = _per_token(ctx)
    ok = ~jnp.isnan(sim)
    count = jnp.sum(ok, axis=-1)
    mean = jnp.sum(jnp.where(ok, sim, 0.0), axis=-1) / jnp.maximum(count, 1)
    return {"nn_similarity": jnp.where(count > 0, mean, jnp.nan)}


def nn_similarity(x, mask=None, *, selection=SELECTION.default):
    """Per-token nearest-neighbour similarity of each cloud x [..., N, D] -> [..., N].

    Its mean over the valid tokens (NaN excluded) is the per-layer summary
    (``layer_geometry``'s ``nn_similarity``). Reference: the paper's code.
    """
    x = validation.as_points(x, "x")
    validation.check_max_k(x.shape[-2], 2, name="N")
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask)
    valid = jnp.ones(x.shape[:-1], bool) if mask is None else mask
    return backends.on_points(_per_token, x, valid, {"selection": selection}, knn_k=2)


NN_SIMILARITY = Observable(
    name="nn_similarity",
    compute=_nn_similarity,
    fields=(
        Field("nn_similarity", (), "mean over tokens of cos(x_i - x_nn1(i), x_i - x_nn2(i))."),
    ),
    consumes=("points", "knn"),
    doc=nn_similarity_from_lists.__doc__,
    reference="the paper's code (nearest-neighbour similarity)",
    reduce="mean over valid tokens where defined",
    knn_k=lambda o: 2,
)
