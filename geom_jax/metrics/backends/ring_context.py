"""The ring execution context: a layer chunk's intermediates with each cloud's points
split over a mesh's data axis (``neighbour_path="ring"``, metrics/neighbours/ring_rows.py).

`RingContext` answers what `blocked_context.BlockedContext` answers, from the ring
kernels instead of row blocks of a replicated cloud: no device ever holds a whole
cloud, so a device needs O((N / devices)(D + k + #ranks) + tile) memory per cloud.
Every row's candidates are re-ranked by exact distance (where the blocked path
certifies the Gram order of most rows and re-ranks the others), which gives the same
lists, and their exact squared distances for ``knn_sq_at``. Neighbour lists and counts
equal one device's; the IDs agree to ~1e-7 (ring_rows: the centre's rounding).

Two questions need a point and all its neighbours' points on one device, which the
ring never gathers; they are refused (`Refused`, a ValueError): the Gram entries
between a point's neighbours (``neighbour_sq_distances``) and passes over every pair
of a cloud (``map_rows``).
"""

import functools

import jax.numpy as jnp

from geom_jax.metrics.backends.blocked_context import BlockedContext
from geom_jax.metrics.neighbours import blocked_rows, refinement, ring_rows


class Refused(ValueError):
    """A question the ring path cannot answer (the engine adds the observable's name)."""


def _refuse(what):
    raise Refused(
        f"{what}, which neighbour_path='ring' (each cloud's points split over the mesh) "
        "never brings onto one device; use neighbour_path='blocked' with this mesh"
    )


class RingKnn(refinement.CertifiedKnn):
    """Exact neighbour lists of the ring path (every row re-ranked by exact distance):
    idx [C, N, k], their exact squared distances, and ``pair_sq(also)``, the exact
    squared distances of other pairs (one more pass around the ring)."""

    def __init__(self, x, idx, exact_sq, pair_sq):
        super().__init__(x, idx, jnp.ones(idx.shape[:-1], bool), exact_sq)
        self._pair_sq = pair_sq

    def sq_at(self, positions, also=None):
        sq = self._exact_sq[..., tuple(int(p) for p in positions)]
        return sq if also is None else (sq, self._pair_sq(also))


class RingContext(BlockedContext):
    """Shared intermediates of clouds x [C, N, D] split over ``rows`` (a
    ring_rows.RingRows); block_rows: own rows per tile (None: ring_rows.TILE_BYTES'
    worth). The interface of BlockedContext."""

    def __init__(self, x, valid, options, *, rows, block_rows=None, **context):
        super().__init__(x, valid, options, block_rows=block_rows, rows=rows, **context)
        self.block = ring_rows.tile_rows_for(rows.width(x.shape[-2]), block_rows)

    def _select(self, valid_near, valid_rank, k_near, ranks):
        if valid_rank is not valid_near:
            raise ValueError("the ring selection takes one mask for both lists")
        _, centre, sq = self._centred
        near, ranked, keys = ring_rows.select(
            self._rows,
            self.x,
            centre,
            sq,
            self.valid,
            valid_near,
            k_near=k_near,
            ranks=ranks,
            block=self.block,
            method=self.method,
        )
        return near, ranked, keys, None

    @functools.cached_property
    def unique(self):
        _, centre, sq = self._centred
        return ring_rows.distinct_points(
            self._rows,
            self.x,
            centre,
            sq,
            self.valid,
            self._selection[2],
            self.duplicate_tolerance,
            block=self.block,
        )

    def _pair_sq(self, idx):
        return ring_rows.candidate_sq_distances(
            self._rows, self.x, self.valid, idx, block=self.block, masked=False
        )

    @functools.cached_property
    def _knn(self):
        near = self._selection[0]
        sq, idx = ring_rows.rerank(
            self._rows,
            self.x,
            near,
            self.valid,
            self.knn_k,
            block=self.block,
            rows_valid=self.valid,
        )
        return RingKnn(self.x, idx, sq, self._pair_sq)

    def _knn_among_distinct(self, k):
        near_u = self._distinct_selection[1][..., : refinement.num_candidates(k, self.x.shape[-2])]
        rows, x, keep, block = self._rows, self.x, self.unique, self.block
        return lambda: ring_rows.rerank(rows, x, near_u, keep, k, block=block)

    def candidate_sq_distances(self, idx, valid):
        return ring_rows.candidate_sq_distances(self._rows, self.x, valid, idx, block=self.block)

    def query_ranks(self, queries, source=None):
        """rank(i, queries[i, q]) [C, N, Q] in these clouds, or in the clouds of
        ``source`` (another layer's rank_source(), same valid points), on the ring."""
        x = self.x if source is None else source["points"]
        _, centre, sq = (
            self._centred if source is None else blocked_rows.centred_points(x, self.valid)
        )
        return ring_rows.query_ranks(
            self._rows, x, centre, sq, self.valid, queries, block=self.block
        )

    def neighbour_sq_distances(self, idx):
        _refuse("this observable reads the Gram entries between each point's neighbours")

    def map_rows(self, fn, *operands):
        _refuse("this observable passes over every pair of points of a cloud (ctx.map_rows)")


class RingKernels:
    """dense_context.StackContext's whole-cloud kernels (blocked_context.BlockedKernels'
    interface) on the ring."""

    def __init__(self, rows, block_rows=None):
        self.rows = rows
        self.block_rows = block_rows

    def _block(self, x):
        return ring_rows.tile_rows_for(self.rows.width(x.shape[-2]), self.block_rows)

    def exact_knn(self, x, valid, k, method):
        """(squared distances, indices) [C, N, k] of the k nearest valid neighbours."""
        _, centre, sq = blocked_rows.centred_points(x, valid)
        near = ring_rows.select(
            self.rows,
            x,
            centre,
            sq,
            valid,
            valid,
            k_near=refinement.num_candidates(k, x.shape[-2]),
            ranks=(),
            block=self._block(x),
            method=method,
        )[0]
        return ring_rows.rerank(self.rows, x, near, valid, k, block=self._block(x))

    def query_ranks(self, x, valid, queries):
        """rank(i, queries[i, q]) [C, N, Q] in clouds x [C, N, D]."""
        _, centre, sq = blocked_rows.centred_points(x, valid)
        return ring_rows.query_ranks(self.rows, x, centre, sq, valid, queries, block=self._block(x))
