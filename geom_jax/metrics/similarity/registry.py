"""The built-in similarity measures, one registration line each.

A measure of another package registers its own :class:`~geom_jax.metrics.similarity.
measure.SimilarityMeasure` with ``measure.register`` (or through the entry-point group
``geom_jax.similarity_measures``, loaded here), after which ``layer_similarity``,
``similarity_null`` and ``compare_representations.py --measures`` take its name.
"""

from importlib import metadata

from geom_jax.metrics.similarity import (
    cca,
    cka_hsic,
    knn_alignment,
    linear_predictivity,
    measure,
    rsa,
    shape_metrics,
)

measure.register(knn_alignment.MUTUAL_KNN)
measure.register(knn_alignment.CKNNA)
measure.register(cka_hsic.CKA)
measure.register(cka_hsic.CKA_DEBIASED)
measure.register(shape_metrics.PROCRUSTES)
measure.register(shape_metrics.SHAPE_METRIC)
measure.register(cca.SVCCA)
measure.register(cca.PWCCA)
measure.register(rsa.RSA)
measure.register(linear_predictivity.LINEAR_PREDICTIVITY)

DEFAULT = ("mutual_knn", "cknna", "cka", "cka_debiased")
"""The measures ``layer_similarity`` computes when none are named."""

ENTRY_POINTS = "geom_jax.similarity_measures"

for _entry in metadata.entry_points(group=ENTRY_POINTS):
    measure.register(_entry.load())
