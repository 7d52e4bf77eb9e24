"""Exact k nearest neighbours of point clouds (the public ``knn``).

The kernels live in one module per job: ``host_selection`` (NumPy on the XLA
buffers, host / XLA backend choice), ``packing`` ((value, index) uint64 sort
keys), ``selection`` (neighbour indices from the centred Gram matrix) and
``refinement`` (exact distances of the selected pairs and re-ranking).
"""

import functools

import jax
import jax.numpy as jnp

from geom_jax.metrics import validation
from geom_jax.metrics.declare.options import MAX_K, SELECTION
from geom_jax.metrics.neighbours import distances, host_selection
from geom_jax.metrics.neighbours.refinement import exact_knn


@functools.partial(jax.jit, static_argnames=("k", "method"))
def _knn(x, valid, k, method):
    gram, _ = distances.centred_gram(x, valid)
    sq, idx = exact_knn(x, gram, valid, k, method)
    return jnp.sqrt(sq), idx


def knn(x, mask=None, *, k=MAX_K.default, selection=SELECTION.default):
    """k nearest neighbours of every point of each cloud x [..., N, D].

    Candidates are selected from the centred Gram matrix and the returned
    distances are exact direct differences of the selected pairs. Only points
    with mask True are neighbours.

    Args:
      x: [..., N, D] float points.
      mask: bool [..., N] valid points (None: all).
      k: neighbours per point.
      selection: "auto", "host" or "xla" (identical results).

    Returns:
      (dists, idx) [..., N, k]: float32 distances and int32 indices, the point
      itself excluded, ordered by (distance, index) so ties go to the lower index.
    """
    host_selection.check_method(selection)
    x = validation.as_points(x, "x")
    validation.check_max_k(x.shape[-2], k, name="k")
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask, max_k=k)
    return _knn(x, distances.valid_or_all(x, mask), k, selection)
