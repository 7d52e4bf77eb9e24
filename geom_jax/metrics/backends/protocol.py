"""What both execution contexts (dense_context.LayerContext,
blocked_context.BlockedContext) answer the same way: the caller's inputs, the duplicate
tolerance, per-context caching, the exact squared distances along the shared
neighbour lists (``self._knn``: a refinement.CertifiedKnn), the lists among distinct
points, the cosine statistics and passes over blocks of rows (``map_rows``). A context
supplies its kernels for the lists among distinct points and the cosine statistics
(``_knn_among_distinct``, ``_cosine_stats``) and its row map (``_rows``)."""

import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.metrics.declare.options import BLOCK_ROWS, DUPLICATE_TOLERANCE
from geom_jax.metrics.neighbours import blocked_rows, refinement


class ContextBase:
    """Base of the layer contexts: clouds x [C, N, D], valid [C, N], the option values,
    the shared list length knn_k, the ranks to select, the caller's inputs, each
    cloud's layer and its exponent (int32 [C]: the engine divided each cloud by
    2**exponent, metrics/backends/conditioning.py; 0 where it was not rescaled), which an
    observable whose values depend on the scale other than as a length (a log density,
    a ridge penalty) reads to restore the input's units. Subclasses provide ``_knn`` and
    ``unique``, and define ``_knn_among_distinct(k)`` (reads what it needs, returns the
    function that computes the lists among distinct points) and
    ``_cosine_stats(include_diagonal)``."""

    _rows = blocked_rows.LOCAL
    """How row blocks are mapped: on this device (the dense path, and the blocked path
    without a mesh), or split over a mesh's axis (blocked_rows.ShardedRows)."""

    def __init__(self, x, valid, options, *, knn_k, ranks, inputs, layer, exponent=None):
        self.x = x
        self.valid = valid
        self.options = options
        self.knn_k = int(knn_k)
        self.ranks = tuple(ranks)
        self.layer = layer
        self.exponent = jnp.zeros(x.shape[:1], jnp.int32) if exponent is None else exponent
        self._inputs = inputs

    @property
    def duplicate_tolerance(self):
        return self.options.get(DUPLICATE_TOLERANCE.name, DUPLICATE_TOLERANCE.default)

    def input(self, name):
        if name not in self._inputs:
            raise ValueError(
                f"layer_geometry needs inputs[{name!r}] (pass inputs={{{name!r}: ...}})"
            )
        return self._inputs[name]

    def cached(self, key, fn):
        """fn(self), computed once per context for ``key`` (hashable)."""
        cache = self.__dict__.setdefault("_cached", {})
        if key not in cache:
            cache[key] = fn(self)
        return cache[key]

    def knn_sq_at(self, positions, also=None):
        """Exact squared distances [C, N, len(positions)] at 0-based positions of the
        lists (only those pairs are refined; a request inside an earlier one reads
        it); with ``also`` [C, N, J], the exact squared distances of those pairs
        too, from the same pass (unmasked)."""
        positions = tuple(int(p) for p in positions)
        if also is not None:
            return self._knn.sq_at(positions, also)
        cache = self.__dict__.setdefault("_knn_sq_at", {})
        for done, sq in cache.items():
            if positions == done:
                return sq
            if set(positions) <= set(done):
                return sq[..., np.array([done.index(p) for p in positions])]
        cache[positions] = self._knn.sq_at(positions)
        return cache[positions]

    def candidate_sq_distances(self, idx, valid):
        """Exact squared distances [C, N, J] from each point to its candidates idx
        [C, N, J] (>= 0) by direct differences; +inf where a candidate is not valid
        (valid [C, N]) or is the point itself."""
        return refinement.refine_candidates(self.x, idx, valid)

    def map_rows(self, fn, *operands):
        """fn(start, block, *cloud_operands) -> a pytree of [block, ...] for the rows
        start..start + block of one cloud, over the row blocks of every cloud: operands
        [C, ...] (one slice per cloud, each whole) -> [C, N, ...]. Blocks of
        ``block_rows`` rows (blocked_rows.block_rows_for) on both paths, split over the
        mesh's devices on a sharded blocked path: a pass of its own for an observable
        that needs every pair (e.g. counts of pairs closer than a radius) in
        O(block x N) memory."""
        n = self.x.shape[-2]
        block = blocked_rows.block_rows_for(n, self.options.get(BLOCK_ROWS.name))
        rows = self._rows

        def per_cloud(ops):
            return rows(lambda start, *o: fn(start, block, *o), n, block, *ops)

        return lax.map(per_cloud, operands)

    @property
    def knn_sq(self):
        return self.knn_sq_at(range(self.knn_k))

    @property
    def knn_idx(self):
        return self._knn.idx

    def knn_unique(self, k):
        """(squared distances, indices) [C, N, k] of the k nearest distinct valid points;
        the shared lists' first k when no cloud of the chunk has duplicates."""
        if k > self.knn_k:
            raise ValueError(f"knn_unique({k}) needs knn_k >= {k} (declare knn_unique_k)")

        def compute(c):
            # everything cached is read here, outside the branches of the cond
            sq, idx = c.knn_sq_at(range(k)), c.knn_idx
            among_distinct = c._knn_among_distinct(k)
            return lax.cond(
                jnp.all(c.unique == c.valid), lambda: (sq, idx[..., :k]), among_distinct
            )

        return self.cached(("knn_unique", k), compute)

    def cosine_stats(self, include_diagonal=True):
        """(mean, std) [C] of the cosine-similarity matrix of the valid points, computed
        once per context."""
        return self.cached(
            ("cosine_stats", include_diagonal), lambda c: c._cosine_stats(include_diagonal)
        )
