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
    data_overlap,
    knn_alignment,
    knn_sequences,
    linear_predictivity,
    measure,
    rbf_cka,
    rsa,
    shape_metrics,
)

measure.register(knn_alignment.MUTUAL_KNN)
measure.register(knn_alignment.CKNNA)
measure.register(cka_hsic.CKA)
measure.register(cka_hsic.CKA_DEBIASED)
measure.register(rbf_cka.CKA_RBF)
measure.register(knn_sequences.CYCLE_KNN)
measure.register(knn_sequences.LCS_KNN)
measure.register(knn_sequences.EDIT_DISTANCE_KNN)
measure.register(data_overlap.DATA_OVERLAP)
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


def readme_table() -> str:
    """The README's table of the registered measures, from their declarations."""
    lines = [
        "| measure | options (defaults) | score | reference |",
        "| --- | --- | --- | --- |",
    ]
    for name in measure.names():
        m = measure.get(name)
        opts = ", ".join(f"`{o.name}={o.default!r}`" for o in m.options if o.flag) or "none"
        kind = "similarity" if m.similarity else "distance"
        best = "" if m.best is None else f", best {m.best:g}"
        lines.append(f"| `{name}` | {opts} | {m.doc.rstrip('.')} ({kind}{best}) | {m.reference} |")
    return "\n".join(lines)
