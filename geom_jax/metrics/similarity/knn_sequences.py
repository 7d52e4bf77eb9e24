"""Neighbour-list measures of platonic-rep beyond mutual k-NN: cycle k-NN, and the longest
common subsequence and edit distance of the ordered lists; with the list machinery that
``data_overlap`` shares (lists per layer, their relabelling, a map over layer pairs).

Huh et al. 2024 (The Platonic Representation Hypothesis, ICML, arXiv 2405.07987; its
code, minyoungg/platonic-rep ``metrics.py``, ``AlignmentMetrics``) compare the k
nearest neighbours of every point in two representations x, y of the same points, by
inner product of the L2-normalised features (its ``compute_score`` normalises before
every metric), the point itself excluded:

* ``cycle_knn(x, y)``: the fraction of points i found again after one step in y and one
  back in x: some j among i's y-neighbours has i among its x-neighbours (platonic-rep's
  ``compute_knn_accuracy(knn_A[knn_B])``). Not symmetric: cycle_knn(y, x) steps in x
  first. Identical representations score the fraction of points with a reciprocated
  neighbour, 1 only when every point has one (always at k = m - 1);
* ``lcs_knn``: the length of the longest common subsequence of point i's two lists
  (ordered nearest first), averaged over points and divided by k;
* ``edit_distance_knn``: 1 - the Levenshtein distance (insertions, deletions,
  substitutions, cost 1 each; torchaudio's ``edit_distance``) of the two ordered lists,
  averaged over points, / k.

Per layer the exact lists idx [L, N, k] (`neighbour_lists.neighbour_lists`: by squared
distance between the normalised features, equivalently by inner product, ties such as
exact duplicate points to the lower index, where platonic-rep's torch argsort leaves
their order unspecified) are computed once and shared by all the layer's pairs; a
permutation of the points relabels them (`relabel`). Per pair of layers every point's
two lists are compared in O(k^2): the LCS and edit-distance dynamic programmes run one
row of the k x k table at a time for all points at once (each row a cumulative max /
min, so shapes are static), and the layer pairs are mapped in batches whose memory
stays bounded (`all_pairs`).

A valid zero vector stays zero after the normalisation (as torch's F.normalize): it is
at inner product 0 from every point, and ranks so in their lists; its own list (every
point at distance 1) follows rounding, as platonic-rep's follows torch's order of equal
inner products. Only points with mask True take part, as points and as neighbours.
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.metrics.neighbours import neighbour_lists
from geom_jax.metrics.similarity import knn_alignment, measure

PAIR_BATCH_ELEMENTS = knn_alignment.PAIR_BATCH_ELEMENTS
"""Entries of the per-point k x k tables (pairs x N x k x k) per batch of layer pairs."""

REFERENCE = (
    "Huh et al. 2024, The Platonic Representation Hypothesis, ICML, arXiv 2405.07987; "
    "checked against platonic-rep metrics.py AlignmentMetrics.{name} on L2-normalised "
    "features (tests/fixtures/platonic_reference.npz), ties to the lower index"
)


def check_k(k):
    """k >= 1 (the option's check, shared with data_overlap)."""
    knn_alignment.K.check(k)


def lists(x, valid, k):
    """Exact Euclidean lists idx [L, N, k] of every layer of x [L, N, D] (valid [N])."""
    vf = jnp.broadcast_to(valid, x.shape[:2])
    return neighbour_lists.neighbour_lists(jnp.where(vf[..., None], x, 0.0), vf, k)


def unit_lists(x, valid, k):
    """Lists [L, N, k] by inner product of the L2-normalised rows of x [L, N, D]."""
    vf = jnp.broadcast_to(valid, x.shape[:2])
    x_hat, _ = knn_alignment.normalised(x, vf)
    return neighbour_lists.neighbour_lists(x_hat, vf, k)


def relabel(idx, perm, valid=None, **options):
    """The lists [L, N, k] of the points reordered as points[:, perm]
    (`knn_alignment.relabelled`). Equal to a new search except where exact ties
    (duplicate points) are ordered: the relabelled lists keep their former order."""
    return knn_alignment.relabelled(idx, perm)


def all_pairs(fn, idx_a, idx_b, valid, symmetric):
    """fn(lists_a [N, k], lists_b [N, k], valid [N]) -> a number, for every layer of idx_a
    [La, N, k] against every layer of idx_b [Lb, N, k] (None: idx_a itself, and with
    `symmetric` only the pairs a <= b are computed and mirrored): [La, Lb]. One flat
    map over the pairs, vectorised over batches of them (PAIR_BATCH_ELEMENTS)."""
    same = idx_b is None
    idx_b = idx_a if same else idx_b
    la, n, k = idx_a.shape
    lb = idx_b.shape[0]
    if same and symmetric:
        pa, pb = (p.astype(np.int32) for p in np.triu_indices(la))
    else:
        pa, pb = np.divmod(np.arange(la * lb, dtype=np.int32), lb)
    batch = int(max(1, min(len(pa), PAIR_BATCH_ELEMENTS // max(1, n * k * k))))
    out = lax.map(
        lambda p: fn(idx_a[p[0]], idx_b[p[1]], valid),
        (jnp.asarray(pa), jnp.asarray(pb)),
        batch_size=batch,
    )
    if same and symmetric:
        full = jnp.zeros((la, la), out.dtype).at[pa, pb].set(out)
        return full.at[pb, pa].set(out)
    return out.reshape(la, lb)


def cycle_hits(ia, ib, valid):
    """Valid points i with some j in ib[i] (y-lists) whose x-list ia[j] holds i."""
    n = ia.shape[0]
    back = jnp.take(ia, jnp.maximum(ib, 0), axis=0)  # [N, k, k]: x-lists of i's y-neighbours
    found = (back == jnp.arange(n, dtype=ia.dtype)[:, None, None]) & (ib >= 0)[..., None]
    return jnp.sum(jnp.any(found, axis=(1, 2)) & valid, dtype=jnp.int32)


def lcs_lengths(a, b):
    """Length of the longest common subsequence of the rows of a and b [N, k] (int32 [N]).

    Row i of the table, c[j] = max(L[i-1, j], L[i-1, j-1] + 1 if a_i = b_j), then
    L[i, j] = max(c[j], L[i, j-1]) = the cumulative max of c (L[i, 0] = 0)."""
    n, k = a.shape
    zero = jnp.zeros((n, 1), jnp.int32)

    def row(i, prev):
        eq = lax.dynamic_index_in_dim(a, i, axis=1) == b
        c = jnp.maximum(prev[:, 1:], jnp.where(eq, prev[:, :-1] + 1, 0))
        return jnp.concatenate([zero, lax.cummax(c, axis=1)], axis=1)

    return lax.fori_loop(0, k, row, jnp.zeros((n, k + 1), jnp.int32))[:, -1]


def edit_distances(a, b):
    """Levenshtein distance of the rows of a and b [N, k] (int32 [N]).

    Row i (1-based) of the table, c[0] = i, c[j] = min(E[i-1, j] + 1, E[i-1, j-1] +
    [a_i != b_j]), then E[i, j] = min(c[j], E[i, j-1] + 1) = j + the cumulative min of
    c[j'] - j'."""
    n, k = a.shape
    cols = jnp.arange(k + 1, dtype=jnp.int32)

    def row(i, prev):
        differ = (lax.dynamic_index_in_dim(a, i, axis=1) != b).astype(jnp.int32)
        c = jnp.minimum(prev[:, 1:] + 1, prev[:, :-1] + differ)
        c = jnp.concatenate([jnp.full((n, 1), i + 1, jnp.int32), c], axis=1)
        return lax.cummin(c - cols, axis=1) + cols

    return lax.fori_loop(0, k, row, jnp.broadcast_to(cols, (n, k + 1)))[:, -1]


def _summed(per_point):
    def total(ia, ib, valid):
        return jnp.sum(jnp.where(valid, per_point(ia, ib), 0), dtype=jnp.int32)

    return total


def _count(valid):
    return jnp.sum(valid).astype(jnp.float32)


def _unit_stats(x, valid, *, k):
    return unit_lists(x, valid, k)


def _cycle_scores(idx_a, idx_b, valid, *, k):
    return all_pairs(cycle_hits, idx_a, idx_b, valid, False).astype(jnp.float32) / _count(valid)


def _lcs_scores(idx_a, idx_b, valid, *, k):
    total = all_pairs(_summed(lcs_lengths), idx_a, idx_b, valid, True)
    return total.astype(jnp.float32) / (_count(valid) * k)


def _edit_scores(idx_a, idx_b, valid, *, k):
    total = all_pairs(_summed(edit_distances), idx_a, idx_b, valid, True)
    return 1.0 - total.astype(jnp.float32) / (_count(valid) * k)


LIST_K = knn_alignment.K
"""k of the k-NN measures (inner product of the unit rows; platonic-rep's topk)."""

CYCLE_KNN = measure.SimilarityMeasure(
    name="cycle_knn",
    doc="Fraction of points i with a y-neighbour j that has i among its x-neighbours.",
    reference=REFERENCE.format(name="cycle_knn"),
    layer_stats=_unit_stats,
    pair_scores=_cycle_scores,
    options=(LIST_K,),
    permute=relabel,
    similarity=True,
    best=1.0,
    min_points=knn_alignment.k_points,
)

LCS_KNN = measure.SimilarityMeasure(
    name="lcs_knn",
    doc="Mean longest common subsequence of each point's two ordered k-NN lists, / k.",
    reference=REFERENCE.format(name="lcs_knn") + " (which does not divide by k)",
    layer_stats=_unit_stats,
    pair_scores=_lcs_scores,
    options=(LIST_K,),
    permute=relabel,
    similarity=True,
    best=1.0,
    min_points=knn_alignment.k_points,
)

EDIT_DISTANCE_KNN = measure.SimilarityMeasure(
    name="edit_distance_knn",
    doc="1 - mean edit distance of each point's two ordered k-NN lists / k.",
    reference=REFERENCE.format(name="edit_distance_knn"),
    layer_stats=_unit_stats,
    pair_scores=_edit_scores,
    options=(LIST_K,),
    permute=relabel,
    similarity=True,
    best=1.0,
    min_points=knn_alignment.k_points,
)


def cycle_knn(x, y, mask=None, *, k=LIST_K.default):
    """Cycle k-NN accuracy of x [..., N, Dx] and y [..., N, Dy].

    The fraction of valid points i such that some j among the k nearest neighbours of i
    in y has i among its own k nearest neighbours in x (neighbours by inner product of
    the L2-normalised features, self excluded, ties to the lower index).

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points.
      mask: bool [..., N] valid points (None: all).
      k: neighbours per point (>= 1; at least k + 1 valid points).

    Returns:
      float32 [...] in [0, 1]. Not symmetric: cycle_knn(y, x) steps in x first.
      Identical inputs score the fraction of points with a reciprocated neighbour.

    Example:
      >>> s = cycle_knn(x, y, k=10)  # x [512, 768], y [512, 1024] -> scalar

    Reference: Huh et al. 2024, The Platonic Representation Hypothesis, ICML,
    arXiv 2405.07987 (platonic-rep ``AlignmentMetrics.cycle_knn``). Deliberate
    difference: ties are broken by the lower index, where torch's argsort leaves their
    order unspecified.
    """
    return measure.evaluate("cycle_knn", x, y, mask, k=k)


def lcs_knn(x, y, mask=None, *, k=LIST_K.default):
    """Longest-common-subsequence alignment of the k-NN lists of x and y.

    Per valid point, the length of the longest common subsequence of its two lists of
    k nearest neighbours (inner product of the L2-normalised features, nearest first,
    self excluded, ties to the lower index); the mean over points, divided by k.

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points.
      mask: bool [..., N] valid points (None: all).
      k: neighbours per point (>= 1; at least k + 1 valid points).

    Returns:
      float32 [...] in [0, 1]; 1 for identical lists. Symmetric in x and y.

    Example:
      >>> s = lcs_knn(x, y, k=10)

    Reference: Huh et al. 2024, ICML, arXiv 2405.07987 (platonic-rep
    ``AlignmentMetrics.lcs_knn``, which returns the mean length itself, in [0, k]: this
    is that divided by k). Ties to the lower index (torch's argsort order is unspecified).
    """
    return measure.evaluate("lcs_knn", x, y, mask, k=k)


def edit_distance_knn(x, y, mask=None, *, k=LIST_K.default):
    """Edit-distance alignment of the k-NN lists of x and y.

    1 - the mean over valid points of the Levenshtein distance (insertion, deletion,
    substitution, each cost 1) between the point's two ordered lists of k nearest
    neighbours (inner product of the L2-normalised features, self excluded, ties to the
    lower index), divided by k.

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points.
      mask: bool [..., N] valid points (None: all).
      k: neighbours per point (>= 1; at least k + 1 valid points).

    Returns:
      float32 [...] in [0, 1]; 1 for identical lists. Symmetric in x and y.

    Example:
      >>> s = edit_distance_knn(x, y, k=10)

    Reference: Huh et al. 2024, ICML, arXiv 2405.07987 (platonic-rep
    ``AlignmentMetrics.edit_distance_knn``: 1 - mean(torchaudio edit_distance) / k).
    Ties to the lower index (torch's argsort order is unspecified).
    """
    return measure.evaluate("edit_distance_knn", x, y, mask, k=k)
