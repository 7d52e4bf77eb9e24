"""The execution engine: what observables see when they compute.

:class:`LayerContext` holds one chunk of clouds and computes the shared
intermediates (distinct points, centred Gram matrix, certified exact
neighbour lists, neighbours at fixed ranks) on first use, so each is
computed once however many observables consume it. :class:`StackContext`
is what pair and prompt observables see: the whole hidden stack, layer-major
[L, B, N, D] as the decoder returns it. :class:`Isolated` keeps the
observables outside the paper's set from changing the paper's numbers.
:class:`DenseKernels` holds the whole-cloud kernels of StackContext;
:func:`map_chunks` runs a function over layer chunks; :func:`on_points` runs
one observable's compute on single clouds (what the public functions use).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from geom_jax.metrics import chunking
from geom_jax.metrics.backends import conditioning
from geom_jax.metrics.backends.protocol import ContextBase
from geom_jax.metrics.measures import cosine
from geom_jax.metrics.neighbours import distances, duplicates, refinement, selection
from geom_jax.metrics.neighbours.ranks import ranks_from_gram


class LayerContext(ContextBase):
    """Shared intermediates of one chunk of clouds x [C, N, D], computed on first use.

    x [C, N, D] (each cloud divided by a power of two near its largest
    coordinate, metrics/backends/conditioning.py: a field measured in units of length
    declares ``Field(length=True)`` and is multiplied back), valid [C, N],
    options (dict), layer [C] int32 (index of each cloud's layer in the
    stack), exponent [C] int32 (x is the input times 2**-exponent), input(name).
    Properties: unique, gram, centre, knn_sq / knn_idx [C, N, knn_k] (exact, all
    valid points, ties to the lower index, +inf / -1 beyond the valid ones and in
    rows of invalid points;
    refinement.certified_knn), knn_sq_at(positions) (those ranks only),
    knn_unique(k) (among distinct points), ranked [C, N, len(ranks)]
    (Gram-selected indices at ranks), cached(key, fn) (a value several
    observables share, computed once).
    """

    @functools.cached_property
    def unique(self):
        return duplicates.distinct_points(self.x, self.valid, self.gram, self.duplicate_tolerance)

    @functools.cached_property
    def _gram(self):
        return distances.centred_gram(self.x, self.valid)

    @property
    def gram(self):
        return self._gram[0]

    @property
    def centre(self):
        return self._gram[1]

    def _cosine_stats(self, include_diagonal):
        return cosine.cosine_stats_from_gram(
            self.x, self.valid, self.gram, self.centre, include_diagonal
        )

    @functools.cached_property
    def _selection(self):
        n = self.x.shape[-2]
        k_near = refinement.num_candidates(self.knn_k, n) if self.knn_k else 0
        return selection.select_neighbours(
            self.gram,
            self.valid,
            self.unique,
            k_near=k_near,
            ranks=self.ranks,
            method=self.options["selection"],
        )

    @property
    def ranked(self):
        return self._selection[1]

    @functools.cached_property
    def _knn(self):
        return refinement.certified_knn(
            self.x, self.gram, self._selection[0], self.valid, self.knn_k, self.options["selection"]
        )

    def _knn_among_distinct(self, k):
        x, gram, keep, method = self.x, self.gram, self.unique, self.options["selection"]
        return lambda: refinement.exact_knn(x, gram, keep, k, method)

    # Higher-level queries, which metrics/blocked_context.BlockedContext answers without
    # the Gram matrix: observables that use them run on either path.

    def rank_source(self):
        """What query_ranks needs to count ranks in this layer's clouds from a later layer."""
        return {"gram": self.gram}

    def query_ranks(self, queries, source=None):
        """rank(i, queries[i, q]) [C, N, Q] in these clouds, or in the clouds of
        ``source`` (another layer's rank_source(), same valid points)."""
        gram = self.gram if source is None else source["gram"]
        return ranks_from_gram(_barrier(gram), self.valid, queries)

    def scatter_moments(self):
        """(tr S, |S|_F^2) [C] of the centred points' scatter matrix S (equal to the
        Gram matrix's: the same nonzero spectrum)."""
        return distances.trace_and_frobenius(_barrier(self.gram))

    def neighbour_sq_distances(self, idx):
        """|x_a - x_b|^2 [C, N, k, k] between the neighbours idx [C, N, k] of each point."""
        return distances.pair_sq_distances_from_gram(_barrier(self.gram), idx)


def _barrier(tree):
    return jax.tree.map(
        lambda a: lax.optimization_barrier(a) if isinstance(a, jax.Array) else a, tree
    )


class Isolated:
    """A view of a context whose arrays pass through lax.optimization_barrier.

    The engine hands it to every observable outside the paper's set, so that
    XLA cannot merge (CSE) or fuse their operations with the paper's:
    requesting more observables never changes the paper's values, bit for bit.
    ``own`` holds per-observable attributes (prepared, previous).
    """

    def __init__(self, ctx, **own):
        self._ctx = ctx
        self._own = own

    def __getattr__(self, name):
        if name in self._own:
            return _barrier(self._own[name])
        value = getattr(self._ctx, name)
        if name == "cached":
            return lambda key, fn: _barrier(value(key, fn))
        if callable(value) and not isinstance(value, jax.Array):
            return lambda *a, **k: _barrier(value(*a, **k))
        return _barrier(value)


class DenseKernels:
    """Whole-cloud neighbour kernels of pair / prompt observables (information
    imbalance's Delta(l -> last) needs exact neighbours and query ranks outside the
    layer loop), through the centred Gram matrix of each cloud [C, N, N];
    blocked_context.BlockedKernels answers the same through blocks of Gram rows."""

    def exact_knn(self, x, valid, k, method):
        """(squared distances, indices) [C, N, k] of the k nearest valid neighbours."""
        gram, _ = distances.centred_gram(x, valid)
        return refinement.exact_knn(x, gram, valid, k, method)

    def query_ranks(self, x, valid, queries):
        """rank(i, queries[i, q]) [C, N, Q] (ranks.ranks_from_gram)."""
        return ranks_from_gram(distances.centred_gram(x, valid)[0], valid, queries)


DENSE = DenseKernels()


class StackContext:
    """What pair / prompt observables see: the whole stack of a batch.

    hidden [L, B, N, D] layer-major (float32, each cloud divided by
    2**exponent [L, B] as the layer observables see it,
    metrics/backends/conditioning.py; computed on first use from the raw stack and
    ``scale()`` -> (exponent, finite), zeros in non-finite clouds: lengths
    measured on it are multiplied back with ``conditioning.restore_lengths``),
    exponent_and_finite, valid [B, N], options, input(name) ([B, ...]),
    exact_knn / query_ranks (whole clouds, through the neighbour path's kernels),
    and map_layers(fn, *per_layer) which runs fn(x [C, N, D], valid [C, N],
    *args [C, ...]) over chunks of layers (args given with leading [L, B]) and
    returns its outputs stacked [L, B, ...].
    """

    def __init__(self, hidden, valid, options, inputs, layer_chunk, scale=None, kernels=DENSE):
        self._raw = hidden
        self._kernels = kernels
        self._scale = scale
        self.valid = valid
        self.options = options
        self._inputs = inputs
        self._chunk = layer_chunk

    @functools.cached_property
    def exponent_and_finite(self):
        if self._scale is None:
            return jnp.zeros(self._raw.shape[:2], jnp.int32), None
        return self._scale()

    @property
    def exponent(self):
        return self.exponent_and_finite[0]

    @functools.cached_property
    def hidden(self):
        exponent, finite = self.exponent_and_finite
        if finite is None:
            return self._raw
        return conditioning.apply_scale(self._raw, self.valid[None], exponent, finite)

    def input(self, name):
        if name not in self._inputs:
            raise ValueError(
                f"layer_geometry needs inputs[{name!r}] (pass inputs={{{name!r}: ...}})"
            )
        return self._inputs[name]

    def exact_knn(self, x, valid, k):
        """(squared distances, indices) [C, N, k] of the k nearest valid neighbours
        of clouds x [C, N, D] (dense or row-blocked, as the layers)."""
        return self._kernels.exact_knn(x, valid, k, self.options["selection"])

    def query_ranks(self, x, valid, queries):
        """rank(i, queries[i, q]) [C, N, Q] in clouds x [C, N, D]."""
        return self._kernels.query_ranks(x, valid, queries)

    def map_layers(self, fn, *per_layer):
        _, b, n, d = self.hidden.shape
        valid = self.valid

        def chunk_fn(start, layers, args):
            del start
            c = layers.shape[0]
            clouds = layers.reshape((c * b, n, d))
            vb = jnp.broadcast_to(valid, (c, b, n)).reshape((c * b, n))
            flat = [a.reshape((c * b,) + a.shape[2:]) for a in args]
            outs = fn(clouds, vb, *flat)
            return jax.tree.map(lambda o: o.reshape((c, b) + o.shape[1:]), outs)

        return map_chunks(chunk_fn, self.hidden, per_layer, self._chunk)


def needs(observables, options, n):
    """(knn_k, ranks) the observables need together: the longest exact neighbour
    list and the union of neighbour ranks among distinct points."""
    knn_k, ranks = 0, set()
    for obs in observables:
        if obs.knn_k is not None:
            knn_k = max(knn_k, int(obs.knn_k(options)))
        if obs.knn_unique_k is not None:
            knn_k = max(knn_k, int(obs.knn_unique_k(options)))
        if obs.ranks is not None:
            ranks.update(obs.ranks(options, n))
    return knn_k, tuple(sorted(ranks))


@functools.partial(jax.jit, static_argnames=("fn", "static_options", "knn_k", "ranks"))
def _on_points(x, valid, *, fn, static_options, knn_k, ranks):
    batch = x.shape[:-2]
    n, d = x.shape[-2:]
    xf = x.reshape((-1, n, d))
    vf = jnp.broadcast_to(valid, x.shape[:-1]).reshape((-1, n))
    layer = jnp.zeros(xf.shape[:1], jnp.int32)
    ctx = LayerContext(
        xf, vf, dict(static_options), knn_k=knn_k, ranks=ranks, inputs={}, layer=layer
    )
    return jax.tree.map(lambda a: a.reshape(batch + a.shape[1:]), fn(ctx))


def on_points(fn, x, valid, options, *, knn_k=0, ranks=()):
    """fn(LayerContext) on clouds x [..., N, D] (jitted; fn a module-level function,
    options a dict of hashable values): what the single-cloud public functions use,
    so that they and layer_geometry share one implementation."""
    options = {"selection": "auto", **options}
    return _on_points(
        x,
        valid,
        fn=fn,
        static_options=tuple(sorted(options.items())),
        knn_k=int(knn_k),
        ranks=tuple(ranks),
    )


def map_chunks(chunk_fn, h, per_layer, chunk, carry=False):
    """chunk_fn(start, layers [c, B, N, D], per_layer args [c, ...]) over layer chunks of h
    [L, B, N, D]; outputs [c, ...] are stacked to [L, ...]. Equal chunks; a last
    partial chunk is the final `chunk` layers (overlapping the previous one), so
    that no padded copy of the stack is made.

    With carry, chunk_fn(start, layers, args, carry_in) -> (outputs, carry_out)
    runs as a scan (carry_in None for the first chunk). Only the overlapping last
    chunk sees a carry from a layer other than its first layer's predecessor, and
    its outputs for those overlapped layers are dropped."""
    n_layers = h.shape[0]
    if chunk >= n_layers:
        if carry:
            return chunk_fn(jnp.int32(0), h, list(per_layer), None)[0]
        return chunk_fn(jnp.int32(0), h, list(per_layer))
    starts = chunking.starts(n_layers, chunk)

    def sliced(start):
        return (
            start,
            lax.dynamic_slice_in_dim(h, start, chunk, axis=0),
            [lax.dynamic_slice_in_dim(a, start, chunk, axis=0) for a in per_layer],
        )

    if carry:
        first, state = chunk_fn(*sliced(jnp.int32(0)), None)
        _, rest = lax.scan(
            lambda c, start: chunk_fn(*sliced(start), c)[::-1],
            state,
            jnp.asarray(starts[1:], jnp.int32),
        )
        outs = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
    else:
        outs = lax.map(lambda start: chunk_fn(*sliced(start)), jnp.asarray(starts, jnp.int32))

    return chunking.assemble(outs, n_layers, chunk)
