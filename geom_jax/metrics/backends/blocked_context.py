"""The row-blocked execution context: a layer chunk's intermediates without N x N arrays.

`BlockedContext` offers what observables read from `dense_context.LayerContext`
(unique, knn_idx, knn_sq_at, knn_unique, ranked, cosine_stats, and the
higher-level queries rank_source / query_ranks, scatter_moments,
neighbour_sq_distances), from
blocks of Gram rows (metrics/neighbours/blocked_rows.py) instead of the Gram matrix, so
that a cloud of N points needs O(N (block + k + #ranks)) memory per layer.
Neighbour lists and distances are exact and equal the dense path's (same
keys, the same certification and exact re-ranking); GRIDE's Gram-ranked
high ranks are selected from the same keys, whose float32 rounding may
differ by an ulp from the dense product's (the IDs then agree to ~1e-7).

`layer_geometry(..., neighbour_path="auto")` uses it when one cloud's Gram
matrix would exceed CLOUD_GRAM_BUDGET (N > 4096) or one chunk's Gram matrices
DENSE_GRAM_BUDGET; "blocked" / "dense" force a path.
"""

import functools

import jax.numpy as jnp
from jax import lax

from geom_jax.metrics.backends.protocol import ContextBase
from geom_jax.metrics.declare import options
from geom_jax.metrics.measures import cosine, spectrum
from geom_jax.metrics.neighbours import blocked_rows, distances, refinement

NEIGHBOUR_PATHS = options.NEIGHBOUR_PATHS

DENSE_GRAM_BUDGET = 2**30
"""Bytes of Gram matrices one layer chunk may hold on the dense path (e.g. 256 prompts
of 1024 tokens): "auto" picks the row-blocked path above it."""

CLOUD_GRAM_BUDGET = 2**26
"""Bytes of one cloud's Gram matrix above which "auto" picks the row-blocked path
(N > 4096): from there on it is also the faster one on CPU (process CPU per layer,
D = 576: 0.28 s against 0.38 s at N = 4096, 0.9 s against 1.55 s at 8192), the
dense path's N x N passes costing more than the blocks' selection."""


def check_neighbour_path(path):
    if path not in NEIGHBOUR_PATHS:
        raise ValueError(f"neighbour_path must be one of {NEIGHBOUR_PATHS}, got {path!r}")


def use_blocked(path, n_clouds, n):
    """Whether a chunk of n_clouds clouds of n points runs row-blocked."""
    check_neighbour_path(path)
    if path != "auto":
        return path in ("blocked", "ring")
    return n * n * 4 > CLOUD_GRAM_BUDGET or n_clouds * n * n * 4 > DENSE_GRAM_BUDGET


def _per_cloud(fn, *arrays):
    """fn on each cloud (leading axis C) in turn (lax.map), outputs stacked [C, ...]."""
    return lax.map(lambda a: fn(*a), arrays)


class BlockedContext(ContextBase):
    """Shared intermediates of clouds x [C, N, D] from blocks of Gram rows.

    The interface of dense_context.LayerContext (see there) except ``gram``, which
    this path never builds; block_rows: rows per block (None: BLOCK_BYTES'
    worth); rows: a blocked_rows row map (LOCAL, or ShardedRows over a mesh).
    """

    def __init__(
        self,
        x,
        valid,
        options,
        *,
        knn_k,
        ranks,
        inputs,
        layer,
        exponent=None,
        block_rows=None,
        rows=blocked_rows.LOCAL,
    ):
        super().__init__(
            x,
            valid,
            options,
            knn_k=knn_k,
            ranks=ranks,
            inputs=inputs,
            layer=layer,
            exponent=exponent,
        )
        self.block = blocked_rows.block_rows_for(x.shape[-2], block_rows)
        self._rows = rows

    @property
    def gram(self):
        raise ValueError(
            "this observable reads the N x N Gram matrix (ctx.gram), which the row-blocked "
            "path never builds; pass neighbour_path='dense' to layer_geometry"
        )

    @property
    def method(self):
        return self.options["selection"]

    @functools.cached_property
    def _centred(self):
        return blocked_rows.centred_points(self.x, self.valid)

    @property
    def centre(self):
        return self._centred[1]

    def _select(self, valid_near, valid_rank, k_near, ranks):
        xc, _, sq = self._centred
        fn = functools.partial(
            blocked_rows.select,
            k_near=k_near,
            ranks=ranks,
            block=self.block,
            method=self.method,
            rows=self._rows,
        )
        if valid_rank is valid_near:
            return _per_cloud(lambda *a: fn(*a, None), xc, sq, valid_near)
        return _per_cloud(fn, xc, sq, valid_near, valid_rank)

    @property
    def _k_near(self):
        return refinement.num_candidates(max(self.knn_k, 1), self.x.shape[-2])

    @functools.cached_property
    def _selection(self):
        """(near, ranked, near_keys, near_sq) among all valid points."""
        return self._select(self.valid, self.valid, self._k_near, self.ranks)

    @functools.cached_property
    def unique(self):
        tolerance = self.duplicate_tolerance
        xc, _, sq = self._centred
        near_keys = self._selection[2]
        fn = functools.partial(
            blocked_rows.distinct_points, tolerance=tolerance, block=self.block, rows=self._rows
        )
        return _per_cloud(fn, self.x, xc, sq, self.valid, near_keys)

    @functools.cached_property
    def _distinct_selection(self):
        """(ranked, near) among distinct points: the first selection's when no cloud
        of the chunk has duplicates, else a second blocked pass."""
        near, ranked = self._selection[0], self._selection[1]
        keep = self.unique
        return lax.cond(
            jnp.all(keep == self.valid),
            lambda: (ranked, near),
            lambda: self._select(keep, keep, self._k_near, self.ranks)[1::-1],  # (ranked, near)
        )

    @property
    def ranked(self):
        return self._distinct_selection[0]

    @functools.cached_property
    def _knn(self):
        near, _, keys, near_sq = self._selection
        sq = self._centred[2]
        return refinement.certify(
            self.x, near, keys, sq, near_sq, self.valid, self.knn_k, self.method
        )

    def _knn_among_distinct(self, k):
        near_u = self._distinct_selection[1]
        m = refinement.num_candidates(k, self.x.shape[-2])
        x, keep, method = self.x, self.unique, self.method
        return lambda: refinement.rerank_candidates(x, near_u[..., :m], keep, k, method)

    def _cosine_stats(self, include_diagonal):
        return cosine.cosine_stats_from_points(self.x, self.valid, include_diagonal)

    def rank_source(self):
        """What query_ranks needs to count ranks in these clouds from a later layer:
        the points themselves ([C, N, D], not a Gram matrix)."""
        return {"points": self.x}

    def query_ranks(self, queries, source=None):
        """rank(i, queries[i, q]) [C, N, Q] in these clouds, or in the clouds of
        ``source`` (another layer's rank_source(), same valid points), a block of
        rows at a time (never a rank matrix)."""
        if source is None:
            xc, _, sq = self._centred
        else:
            xc, _, sq = blocked_rows.centred_points(source["points"], self.valid)
        fn = functools.partial(blocked_rows.query_ranks, block=self.block, rows=self._rows)
        return _per_cloud(fn, xc, sq, self.valid, queries)

    def scatter_moments(self):
        """(tr S, |S|_F^2) [C] of the scatter matrix S = Xc^T Xc [C, D, D]."""
        return distances.trace_and_frobenius(spectrum.scatter_matrix(self._centred[0]))

    def neighbour_sq_distances(self, idx):
        """|x_a - x_b|^2 [C, N, k, k] between the neighbours idx [C, N, k] of each
        point, from Gram entries computed on the points."""
        fn = functools.partial(blocked_rows.pair_gram, block=self.block, rows=self._rows)
        g = _per_cloud(fn, self._centred[0], idx)
        return distances.pair_sq_distances_from_pair_gram(g)


class BlockedKernels:
    """dense_context.StackContext's whole-cloud kernels (dense_context.DenseKernels'
    interface) on the row-blocked path."""

    def __init__(self, block_rows=None, rows=blocked_rows.LOCAL):
        self.block_rows = block_rows
        self.rows = rows

    def _block(self, x):
        return blocked_rows.block_rows_for(x.shape[-2], self.block_rows)

    def exact_knn(self, x, valid, k, method):
        """(squared distances, indices) [C, N, k] of the k nearest valid neighbours."""
        return blocked_rows.exact_knn(
            x, valid, k, block=self._block(x), method=method, rows=self.rows
        )

    def query_ranks(self, x, valid, queries):
        """rank(i, queries[i, q]) [C, N, Q] in clouds x [C, N, D]."""
        xc, _, sq = blocked_rows.centred_points(x, valid)
        fn = functools.partial(blocked_rows.query_ranks, block=self._block(x), rows=self.rows)
        return _per_cloud(fn, xc, sq, valid, queries)
