"""Geometry of token representations: distances, intrinsic dimension, overlap, cosine, ...

Every function is pure JAX, jittable and batched over leading axes; float32
in, float32 out; `mask` is a bool [..., N] of valid tokens (None: all valid).
Each observable is also a named unit of `registry` computed by
`layer_geometry(hidden, mask, observables=...)`.
"""

from geom_jax.metrics import registry
from geom_jax.metrics.cosine import cosine_similarity_stats
from geom_jax.metrics.distances import pairwise_distances
from geom_jax.metrics.geometry import LayerGeometry, layer_geometry, stack_geometry
from geom_jax.metrics.host_callback import SELECTION_METHODS
from geom_jax.metrics.imbalance import imbalance_matrix, information_imbalance
from geom_jax.metrics.intrinsic_dimension import gride, twonn
from geom_jax.metrics.knn_graph import nn_similarity, reciprocity
from geom_jax.metrics.label_overlap import label_overlap
from geom_jax.metrics.local_id import mle_id, tle_id
from geom_jax.metrics.neighbours import knn
from geom_jax.metrics.overlap import neighbourhood_overlap
from geom_jax.metrics.similarity import cka, cknna, layer_similarity, mutual_knn
from geom_jax.metrics.spectrum import matrix_entropy, participation_ratio
from geom_jax.metrics.trajectory import curvature
from geom_jax.metrics.unique import DUPLICATE_TOLERANCE, unique_mask
from geom_jax.metrics.validation import check_sizes, default_range_max, validate_hidden

neighborhood_overlap = neighbourhood_overlap
"""Former spelling of :func:`neighbourhood_overlap`."""

__all__ = [
    "DUPLICATE_TOLERANCE",
    "LayerGeometry",
    "SELECTION_METHODS",
    "check_sizes",
    "cka",
    "cknna",
    "cosine_similarity_stats",
    "curvature",
    "default_range_max",
    "gride",
    "imbalance_matrix",
    "information_imbalance",
    "knn",
    "label_overlap",
    "layer_geometry",
    "layer_similarity",
    "matrix_entropy",
    "mle_id",
    "mutual_knn",
    "neighborhood_overlap",
    "neighbourhood_overlap",
    "nn_similarity",
    "pairwise_distances",
    "participation_ratio",
    "reciprocity",
    "registry",
    "stack_geometry",
    "tle_id",
    "twonn",
    "unique_mask",
    "validate_hidden",
]
