"""Data overlap of two representations: the fraction of shared Euclidean nearest neighbours.

DADApy's ``MetricComparisons.return_data_overlap`` (Doimo et al. 2020, Hierarchical
nucleation in deep neural networks, NeurIPS, arXiv 2007.03506; DADApy, Glielmo et al.
2022, Patterns, arXiv 2205.03373): for representations x, y of the same points, the
mean over points of |N_k^x(i) ∩ N_k^y(i)| / k, N_k the k nearest neighbours by
Euclidean distance of the raw features, the point itself excluded. The layer-pair form
of the neighbourhood overlap chi_k between consecutive layers, and mutual k-NN on
Euclidean rather than cosine neighbours.

Per layer the exact lists idx [L, N, k] (`neighbour_lists.neighbour_lists`, ties such
as exact duplicates to the lower index) are computed once; per pair of layers the k x k
match table of each point's two lists (`knn_sequences.all_pairs`, symmetric: a stack
against itself computes the pairs a <= b); a permutation relabels the lists.
"""

import jax.numpy as jnp

from geom_jax.metrics.declare.observable import Option
from geom_jax.metrics.similarity import knn_alignment, knn_sequences, measure


def shared_neighbours(ia, ib, valid):
    """Listed pairs (i, j), i valid, with j in both lists of i (int32)."""
    match = jnp.any(ia[:, :, None] == ib[:, None, :], axis=-1) & (ia >= 0)
    return jnp.sum(match & valid[:, None], dtype=jnp.int32)


def _stats(x, valid, *, k):
    return knn_sequences.lists(x, valid, k)


def _scores(idx_a, idx_b, valid, *, k):
    count = knn_sequences.all_pairs(shared_neighbours, idx_a, idx_b, valid, True)
    return count.astype(jnp.float32) / (jnp.sum(valid).astype(jnp.float32) * k)


OVERLAP_K = Option(
    "k",
    int,
    30,
    "Euclidean nearest neighbours per point of the data overlap (DADApy's default k = 30).",
    check=knn_sequences.check_k,
)

DATA_OVERLAP = measure.SimilarityMeasure(
    name="data_overlap",
    doc="Mean fraction of shared Euclidean k nearest neighbours (DADApy's data overlap).",
    reference=(
        "Doimo et al. 2020, NeurIPS, arXiv 2007.03506; checked against DADApy 0.3.4 "
        "Data(x).return_data_overlap(coordinates=y, k) (tests/fixtures/"
        "platonic_reference.npz), ties to the lower index"
    ),
    layer_stats=_stats,
    pair_scores=_scores,
    options=(OVERLAP_K,),
    permute=knn_sequences.relabel,
    similarity=True,
    best=1.0,
    min_points=knn_alignment.k_points,
)


def data_overlap(x, y, mask=None, *, k=OVERLAP_K.default):
    """Data overlap of x [..., N, Dx] and y [..., N, Dy].

    The mean over valid points of the fraction of their k nearest neighbours (Euclidean,
    raw features, the point itself excluded, ties to the lower index) shared by x and y.

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points.
      mask: bool [..., N] valid points (None: all).
      k: neighbours per point (>= 1; at least k + 1 valid points).

    Returns:
      float32 [...] in [0, 1]; 1 for identical neighbourhoods. Symmetric in x and y.

    Example:
      >>> s = data_overlap(x, y, k=30)

    Reference: Doimo et al. 2020, Hierarchical nucleation in deep neural networks,
    NeurIPS, arXiv 2007.03506; DADApy 0.3.4 ``Data(x).return_data_overlap(
    coordinates=y, k=30)``. Deliberate difference: exact ties go to the lower index,
    where DADApy takes scikit-learn's order and drops column 0 of its k + 1 lists as the
    point itself (with an exact copy of a point listed first, it drops the copy).
    """
    return measure.evaluate("data_overlap", x, y, mask, k=k)
