"""Geometry of token representations: distances, intrinsic dimension, overlap, cosine.

Every function is pure JAX, jittable and batched over leading axes; float32
in, float32 out; `mask` is a bool [..., N] of valid tokens (None: all valid).
"""

from geom_jax.metrics.cosine import cosine_similarity_stats
from geom_jax.metrics.distances import pairwise_distances
from geom_jax.metrics.geometry import LayerGeometry, layer_geometry
from geom_jax.metrics.intrinsic_dimension import gride, twonn
from geom_jax.metrics.neighbors import SELECTION_METHODS, knn
from geom_jax.metrics.overlap import neighborhood_overlap
from geom_jax.metrics.unique import unique_mask
from geom_jax.metrics.validation import check_sizes, default_range_max, validate_hidden

__all__ = [
    "LayerGeometry",
    "SELECTION_METHODS",
    "check_sizes",
    "cosine_similarity_stats",
    "default_range_max",
    "gride",
    "knn",
    "layer_geometry",
    "neighborhood_overlap",
    "pairwise_distances",
    "twonn",
    "unique_mask",
    "validate_hidden",
]
