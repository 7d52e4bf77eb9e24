"""The library's observables: one line each (order = results order).

Observables of other packages register through the ``geom_jax.observables``
entry-point group instead (:func:`geom_jax.metrics.declare.registry.discover`); the
lens observables of :mod:`geom_jax.lens` are declared that way in setup.py.
"""

from geom_jax.metrics.measures import (
    adp,
    cosine,
    density,
    id_battery,
    imbalance,
    intrinsic_dimension,
    knn_graph,
    label_overlap,
    local_id,
    overlap,
    probes,
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
    id_battery.PCA,
    id_battery.ID_BATTERY,
    trajectory.OBSERVABLE,
    label_overlap.OBSERVABLE,
    probes.OBSERVABLE,
    density.OBSERVABLE,
    adp.OBSERVABLE,
    adp.AGREEMENT,
)
