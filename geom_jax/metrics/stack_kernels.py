"""Whole-cloud neighbour kernels for pair / prompt observables (engine.StackContext).

Observables that combine layers (information imbalance's Delta(l -> last))
need exact nearest neighbours and query ranks of clouds outside the layer
loop. ``DENSE`` computes them through each cloud's centred Gram matrix;
blocked_context.BlockedKernels through blocks of Gram rows. layer_geometry
hands the one its neighbour path uses to the StackContext.
"""

from geom_jax.metrics import distances, refinement
from geom_jax.metrics.ranks import ranks_from_gram


class DenseKernels:
    """Through the centred Gram matrix of each cloud [C, N, N]."""

    def exact_knn(self, x, valid, k, method):
        """(squared distances, indices) [C, N, k] of the k nearest valid neighbours."""
        gram, _ = distances.centred_gram(x, valid)
        return refinement.exact_knn(x, gram, valid, k, method)

    def query_ranks(self, x, valid, queries):
        """rank(i, queries[i, q]) [C, N, Q] (ranks.ranks_from_gram)."""
        return ranks_from_gram(distances.centred_gram(x, valid)[0], valid, queries)


DENSE = DenseKernels()
