"""Geometry of token representations: distances, intrinsic dimension, overlap, cosine, ...

Every function is pure JAX, jittable and batched over leading axes; float32
in, float32 out; `mask` is a bool [..., N] of valid tokens (None: all valid).
Each observable is also a named unit of `registry` computed by
`layer_geometry(hidden, mask, observables=...)`.
"""

import sys

from geom_jax.metrics.compute import LayerGeometry, layer_geometry, stack_geometry
from geom_jax.metrics.declare import observable, options, registry
from geom_jax.metrics.measures.cosine import cosine_similarity_stats
from geom_jax.metrics.measures.density import knn_density, pak_density, pak_kstar
from geom_jax.metrics.measures.density_peaks import (
    adjusted_mutual_information,
    adjusted_rand_index,
    adp_clusters,
    adp_clusters_from_density,
    adp_from_density,
)
from geom_jax.metrics.measures.id_battery import (
    binomial_id,
    corrint_id,
    ess_id,
    fishers_id,
    lpca_id,
    mada_id,
    mom_id,
    pca_id,
    pca_spectrum_exponent,
)
from geom_jax.metrics.measures.imbalance import imbalance_matrix, information_imbalance
from geom_jax.metrics.measures.intrinsic_dimension import gride, twonn
from geom_jax.metrics.measures.knn_graph import nn_similarity, reciprocity
from geom_jax.metrics.measures.label_overlap import label_overlap
from geom_jax.metrics.measures.local_id import mle_id, tle_id
from geom_jax.metrics.measures.overlap import neighbourhood_overlap
from geom_jax.metrics.measures.phd import phd_id
from geom_jax.metrics.measures.probes import linear_probe
from geom_jax.metrics.measures.spectrum import matrix_entropy, participation_ratio
from geom_jax.metrics.measures.trajectory import curvature
from geom_jax.metrics.neighbours.distances import pairwise_distances
from geom_jax.metrics.neighbours.duplicates import DUPLICATE_TOLERANCE as DUPLICATE_TOLERANCE
from geom_jax.metrics.neighbours.duplicates import unique_mask
from geom_jax.metrics.neighbours.host_selection import SELECTION_METHODS as SELECTION_METHODS
from geom_jax.metrics.neighbours.search import knn
from geom_jax.metrics.similarity.cca import pwcca, svcca
from geom_jax.metrics.similarity.data_overlap import data_overlap
from geom_jax.metrics.similarity.knn_sequences import cycle_knn, edit_distance_knn, lcs_knn
from geom_jax.metrics.similarity.layer_pairs import (
    cka,
    cknna,
    layer_similarity,
    mutual_knn,
    similarity_null,
)
from geom_jax.metrics.similarity.linear_predictivity import linear_predictivity
from geom_jax.metrics.similarity.outlier_clamp import clamp_outliers
from geom_jax.metrics.similarity.rsa import rsa
from geom_jax.metrics.similarity.shape_metrics import procrustes, shape_metric
from geom_jax.metrics.validation import check_sizes as check_sizes
from geom_jax.metrics.validation import default_range_max as default_range_max
from geom_jax.metrics.validation import validate_hidden as validate_hidden

neighborhood_overlap = neighbourhood_overlap
"""Former spelling of :func:`neighbourhood_overlap`."""

# Module paths from before metrics/ was split by job, still importable (deprecated):
# observable packages declared through geom_jax.metrics.observable.
for _old, _module in {
    "observable": observable,
    "options": options,
    "registry": registry,
}.items():
    sys.modules.setdefault(f"{__name__}.{_old}", _module)
del _old, _module

__all__ = [
    # the measures, each f(x, mask=None, *, options) or f(x, y, mask=None, *, options)
    "binomial_id",
    "cka",
    "cknna",
    "clamp_outliers",
    "corrint_id",
    "cosine_similarity_stats",
    "curvature",
    "cycle_knn",
    "data_overlap",
    "edit_distance_knn",
    "ess_id",
    "fishers_id",
    "gride",
    "imbalance_matrix",
    "information_imbalance",
    "knn",
    "knn_density",
    "label_overlap",
    "lcs_knn",
    "linear_predictivity",
    "linear_probe",
    "lpca_id",
    "mada_id",
    "matrix_entropy",
    "mle_id",
    "mom_id",
    "mutual_knn",
    "neighbourhood_overlap",
    "nn_similarity",
    "pairwise_distances",
    "pak_density",
    "pak_kstar",
    "participation_ratio",
    "pca_id",
    "pca_spectrum_exponent",
    "phd_id",
    "procrustes",
    "pwcca",
    "reciprocity",
    "rsa",
    "shape_metric",
    "similarity_null",
    "svcca",
    "tle_id",
    "twonn",
    "unique_mask",
    # clustering, per cloud on the host: ADP from densities (neighbour lists given or found
    # in JAX) and scores of labels against known classes
    "adjusted_mutual_information",
    "adjusted_rand_index",
    "adp_clusters",
    "adp_clusters_from_density",
    "adp_from_density",
    # the entry points: every observable of a stack, every pair of layers, the registry
    "LayerGeometry",
    "layer_geometry",
    "layer_similarity",
    "registry",
    "stack_geometry",
]
# Also importable, not part of the curated surface: DUPLICATE_TOLERANCE, SELECTION_METHODS,
# check_sizes, default_range_max, validate_hidden (checks the engine and the run share),
# neighborhood_overlap (the former spelling).
