"""Exact k nearest neighbours (public `knn`); the kernels live in one module per job:

* `host_callback`: NumPy on the XLA buffers, host / XLA backend choice;
* `packing`: (value, index) uint64 sort keys;
* `selection`: neighbour indices from the centred Gram matrix;
* `refinement`: exact distances of the selected pairs and re-ranking.

The names below are re-exported so that `neighbors.select_neighbors` etc. keep working.
"""

import functools

import jax
import jax.numpy as jnp

from geom_jax.metrics import distances, validation
from geom_jax.metrics.host_callback import SELECTION_METHODS, host_call
from geom_jax.metrics.host_callback import check_method as _check_method
from geom_jax.metrics.refinement import (
    REFINE_MARGIN,
    allowed,
    candidate_ranks,
    certified_knn,
    exact_knn,
    num_candidates,
    place_by_rank,
    refine_candidates,
    refine_sq_distances,
    rerank_candidates,
    sort_candidates,
)
from geom_jax.metrics.selection import select_neighbors

__all__ = [
    "REFINE_MARGIN",
    "SELECTION_METHODS",
    "allowed",
    "candidate_ranks",
    "certified_knn",
    "exact_knn",
    "host_call",
    "knn",
    "num_candidates",
    "place_by_rank",
    "refine_candidates",
    "refine_sq_distances",
    "rerank_candidates",
    "select_neighbors",
    "sort_candidates",
]


@functools.partial(jax.jit, static_argnames=("k", "method"))
def _knn(x, valid, k, method):
    gram, _ = distances.centred_gram(x, valid)
    sq, idx = exact_knn(x, gram, valid, k, method)
    return jnp.sqrt(sq), idx


def knn(x, mask=None, *, k=32, selection="auto"):
    """k nearest neighbours of every point of each cloud x [..., N, D].

    Returns (dists, idx) [..., N, k]: float32 distances and int32 indices,
    the point itself excluded, ordered by (distance, index) so ties go to the
    lower index. Candidates are selected from the centred Gram matrix and
    the returned distances are exact direct differences of the selected
    pairs. Only points with mask True are neighbours.
    """
    _check_method(selection)
    x = validation.as_points(x, "x")
    validation.check_max_k(x.shape[-2], k, name="k")
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask, max_k=k)
    return _knn(x, distances.valid_or_all(x, mask), k, selection)
