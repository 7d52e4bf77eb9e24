"""The library's observables: one registration line each (order = results order)."""

from geom_jax.metrics import (
    cosine,
    imbalance,
    intrinsic_dimension,
    knn_graph,
    local_id,
    overlap,
    registry,
    spectrum,
    trajectory,
)

BUILTIN = (
    intrinsic_dimension.OBSERVABLE,
    cosine.OBSERVABLE,
    overlap.OBSERVABLE,
    knn_graph.RECIPROCITY,
    knn_graph.NN_SIMILARITY,
    imbalance.OBSERVABLE,
    local_id.MLE,
    local_id.TLE,
    spectrum.PARTICIPATION_RATIO,
    spectrum.MATRIX_ENTROPY,
    trajectory.OBSERVABLE,
)


def register_all():
    for obs in BUILTIN:
        if obs.name not in registry.REGISTRY:
            registry.register(obs)
