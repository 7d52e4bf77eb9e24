"""Float64 transcription of the persistent-homology dimension (Tulchinskii et al. 2023,
arXiv 2306.04723; the authors' code github.com/ArGintum/GPTID ``IntrinsicDim.py``) on
given subsets, the test oracle of geom_jax.metrics.measures.phd.

Written from the definition, independently of geom_jax (the subsets are an input: the
tests draw them with ``phd.subsample_indices``, so that both sides see the same points):
SciPy distances and ``scipy.sparse.csgraph.minimum_spanning_tree``, NumPy medians and
``np.polyfit`` slopes. SciPy reads a zero (or near-zero: below 1e-8) entry of the
distance matrix as a missing edge, so the tree is taken over the distinct points: the
copies of a point join it at length 0, which leaves the weight unchanged.
"""

import numpy as np
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import cdist


def mst_weight(points, alpha=1.0):
    """sum over the edges of a Euclidean minimum spanning tree of points [n, D] of
    |e|^alpha, in float64."""
    distinct = np.unique(np.asarray(points, np.float64), axis=0)
    return float((minimum_spanning_tree(cdist(distinct, distinct)).data ** alpha).sum())


def phd(x, subsets, sizes, n_valid, restarts, alpha=1.0, restarts_large=3):
    """PHD of x [N, D] (cast to float64) from subsets: per size index j, int [reruns,
    draws, >= sizes[j]] whose rows' first sizes[j] entries are a subset; the median over
    the first ``restarts`` subsets (``restarts_large`` when n_valid <= 2 n), the slope
    of log median against log n per rerun, their mean m, and alpha / (1 - m)."""
    x = np.asarray(x, np.float64)
    logs = []
    for n, idx in zip(sizes, subsets):
        idx = np.asarray(idx)[..., :n]
        weight = np.array([[mst_weight(x[i], alpha) for i in rerun] for rerun in idx])
        use = restarts_large if n_valid <= 2 * n else restarts
        logs.append(np.log(np.median(weight[:, :use], axis=1)))
    logs = np.stack(logs, axis=-1)  # [reruns, sizes]
    slopes = [np.polyfit(np.log(np.asarray(sizes, np.float64)), y, 1)[0] for y in logs]
    return alpha / (1.0 - np.mean(slopes))
