"""All geometry metrics of a hidden-state stack in one jitted call."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from geom_jax.metrics import (
    cosine,
    distances,
    intrinsic_dimension,
    neighbors,
    overlap,
    unique,
    validation,
)


@struct.dataclass
class LayerGeometry:
    """Per-layer geometry of token clouds; leading axes [...] are the prompts.

    gride_ids, gride_errs, gride_scales: [..., L, S] GRIDE at n1 = 2**s.
    twonn: [..., L] TwoNN, linear fit on the kept fraction (twonn_discard_fraction).
    twonn_ml: [..., L] TwoNN maximum likelihood (N - 1) / sum log mu.
    overlap: [..., L-1, max_k], overlap[..., l, k-1] = chi_k(layer l, layer l+1).
    cos_mean, cos_std: [..., L] cosine-similarity statistics, diagonal included.
    n_unique: [..., L] number of distinct valid tokens (the ID estimators' N).
    """

    gride_ids: jax.Array
    gride_errs: jax.Array
    gride_scales: jax.Array
    twonn: jax.Array
    twonn_ml: jax.Array
    overlap: jax.Array
    cos_mean: jax.Array
    cos_std: jax.Array
    n_unique: jax.Array


CHUNK_GRAM_BYTES = 8 * 2**20
"""Default Gram-matrix size per layer chunk: small enough for the allocator to
reuse buffers between chunks (larger ones are fresh mmaps, page-faulted on
every call) and to bound memory, large enough to amortise per-chunk overhead."""


def auto_layer_chunk(n_layers, n_prompts, n_tokens):
    """Layers per chunk so that one chunk's Gram matrices take about CHUNK_GRAM_BYTES."""
    per_layer = n_prompts * n_tokens * n_tokens * 4
    widest = max(1, min(n_layers, CHUNK_GRAM_BYTES // per_layer))
    n_chunks = -(-n_layers // widest)
    return -(-n_layers // n_chunks)


def _clouds(x, valid, *, n_scales, max_k, discard_fraction, include_diagonal, method):
    """Everything except the overlap for clouds x [C, N, D], valid [C, N].

    Neighbour ranks r <= max_k needed by GRIDE/TwoNN are read from the
    exactly re-ranked overlap candidates when no cloud of the chunk has
    duplicates (the usual case after the embedding layer); otherwise, and
    for the larger ranks, the Gram-selected pairs among unique points are
    refined separately.
    """
    keep = unique.first_occurrence(x, valid)
    gram, centre = distances.centred_gram(x, valid)
    cos_mean, cos_std = cosine.cosine_stats_from_gram(x, valid, gram, centre, include_diagonal)
    ranks = intrinsic_dimension.gride_ranks(n_scales)
    near, ranked = neighbors.select_neighbors(
        gram,
        valid,
        keep,
        k_near=neighbors.num_candidates(max_k, x.shape[-2]),
        ranks=ranks,
        method=method,
    )
    del gram
    sq, lists = neighbors.rerank_candidates(x, near, valid, max_k, method)

    low = [i for i, r in enumerate(ranks) if r <= max_k]
    high = [i for i, r in enumerate(ranks) if r > max_k]
    low_ranks = np.asarray([ranks[i] for i in low]) - 1
    exact_low = lax.cond(
        jnp.all(keep == valid),
        lambda: sq[..., low_ranks],
        lambda: neighbors.refine_candidates(x, ranked[..., low], keep),
    )
    exact_high = neighbors.refine_candidates(x, ranked[..., high], keep)
    exact_ranked = jnp.concatenate([exact_low, exact_high], axis=-1)
    exact_ranked, _ = neighbors.sort_candidates(exact_ranked, ranked, len(ranks), "xla")
    r = jnp.sqrt(exact_ranked)
    ids, errs, scales = intrinsic_dimension.gride_from_neighbors(r, keep)
    tw = intrinsic_dimension.twonn_from_neighbors(r[..., 0], r[..., 1], keep, discard_fraction)
    tw_ml = intrinsic_dimension.twonn_from_neighbors(r[..., 0], r[..., 1], keep, 0.0)
    n_unique = jnp.sum(keep, axis=-1).astype(jnp.int32)
    return ids, errs, scales, tw, tw_ml, cos_mean, cos_std, n_unique, lists


@functools.partial(
    jax.jit,
    static_argnames=(
        "range_max",
        "max_k",
        "layer_chunk",
        "twonn_discard_fraction",
        "include_diagonal",
        "selection",
    ),
)
def _layer_geometry(
    hidden,
    mask,
    *,
    range_max,
    max_k,
    layer_chunk,
    twonn_discard_fraction,
    include_diagonal,
    selection,
):
    prompt_shape = hidden.shape[:-3]
    n_layers, n, d = hidden.shape[-3:]
    b = 1
    for s in prompt_shape:
        b *= s
    h = hidden.reshape((b, n_layers, n, d))
    valid = jnp.ones((b, n), bool) if mask is None else mask.reshape((b, n))
    cloud_fn = functools.partial(
        _clouds,
        n_scales=validation.n_scales(n, range_max),
        max_k=max_k,
        discard_fraction=twonn_discard_fraction,
        include_diagonal=include_diagonal,
        method=selection,
    )

    def chunk_fn(layers):
        """layers [b, c, N, D] -> outputs with leading axes [c, b]."""
        c = layers.shape[1]
        clouds = jnp.swapaxes(layers, 0, 1).reshape((c * b, n, d))
        vb = jnp.broadcast_to(valid, (c, b, n)).reshape((c * b, n))
        return tuple(o.reshape((c, b) + o.shape[1:]) for o in cloud_fn(clouds, vb))

    chunk = (
        auto_layer_chunk(n_layers, b, n) if layer_chunk is None else min(int(layer_chunk), n_layers)
    )
    if chunk >= n_layers:
        outs = chunk_fn(h)
    else:
        # Equal chunks; a last partial chunk is taken as the final `chunk` layers
        # (overlapping the previous one) so that no padded copy of the stack is made.
        n_full, rem = divmod(n_layers, chunk)
        starts = [i * chunk for i in range(n_full)] + ([n_layers - chunk] if rem else [])
        outs = lax.map(
            lambda start: chunk_fn(lax.dynamic_slice_in_dim(h, start, chunk, axis=1)),
            jnp.asarray(starts, jnp.int32),
        )

        def layers_of(o):
            full = o[:n_full].reshape((n_full * chunk,) + o.shape[2:])
            return jnp.concatenate([full, o[-1, chunk - rem :]], axis=0) if rem else full

        outs = tuple(layers_of(o) for o in outs)
    ids, errs, scales, tw, tw_ml, cos_mean, cos_std, n_unique, lists = outs
    chi = overlap.overlap_from_lists(lists[:-1], lists[1:], valid)

    def out(a):
        a = jnp.swapaxes(a, 0, 1)
        return a.reshape(prompt_shape + a.shape[1:])

    return LayerGeometry(
        gride_ids=out(ids),
        gride_errs=out(errs),
        gride_scales=out(scales),
        twonn=out(tw),
        twonn_ml=out(tw_ml),
        overlap=out(chi),
        cos_mean=out(cos_mean),
        cos_std=out(cos_std),
        n_unique=out(n_unique),
    )


def layer_geometry(
    hidden,
    mask=None,
    *,
    range_max=None,
    max_k=32,
    layer_chunk=None,
    twonn_discard_fraction=0.1,
    include_diagonal=True,
    selection="auto",
    validate=True,
):
    """GRIDE, TwoNN, neighbourhood overlap and cosine statistics for every layer.

    hidden: [..., L, N, D] hidden states (e.g. [B, L+1, T, D] from a model);
    mask: bool [..., N] valid tokens per prompt, shared by all layers (None:
    all valid). One Gram matrix per layer serves distances and cosine; ID
    estimators use the distinct valid tokens (first occurrence kept),
    overlap and cosine all valid tokens. range_max None is min(256, N - 1),
    the largest GRIDE range N tokens support. layer_chunk bounds memory by
    processing that many layers at a time (lax.map); None picks about
    8 MiB of Gram matrix per chunk (2 layers of 1024 tokens, 1 layer of
    2048 or more), which is also about the fastest on CPU; layer_chunk >= L
    processes all layers at once. selection: "auto"
    (NumPy host selection on CPU, lax.top_k elsewhere), "host" or "xla".
    With validate (default) and concrete inputs, validate_hidden runs first;
    under an outer jit / shard_map only the static checks run.
    Returns a LayerGeometry pytree of float32 arrays.
    """
    neighbors._check_method(selection)
    validation.check_discard_fraction(twonn_discard_fraction, "twonn_discard_fraction")
    if layer_chunk is not None and (not isinstance(layer_chunk, int) or layer_chunk < 1):
        raise ValueError(f"layer_chunk must be a positive integer or None, got {layer_chunk!r}")
    if validate:
        validation.validate_hidden(hidden, mask, range_max=range_max, max_k=max_k)
    else:
        validation.check_sizes(hidden.shape[-2], range_max=range_max, max_k=max_k)
    hidden = validation.as_points(hidden, "hidden", min_rank=3)
    range_max = validation.resolve_range_max(hidden.shape[-2], range_max)
    if mask is not None:
        mask = jnp.asarray(mask, bool)
    return _layer_geometry(
        hidden,
        mask,
        range_max=int(range_max),
        max_k=int(max_k),
        layer_chunk=layer_chunk,
        twonn_discard_fraction=float(twonn_discard_fraction),
        include_diagonal=bool(include_diagonal),
        selection=selection,
    )
