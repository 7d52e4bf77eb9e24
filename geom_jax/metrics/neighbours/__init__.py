"""Exact nearest neighbours, the machinery every measure shares.

Distances and centred Gram matrices (``distances``), selection of candidates from
the Gram order (``selection``, with packed sort keys from ``packing`` and the NumPy
host backend in ``host_selection``), exact refinement by direct differences
(``refinement``), ranks of query points (``ranks``), duplicate and near-duplicate
points (``duplicates``), the row-blocked path that never holds N x N
(``blocked_rows``, with shard_map helpers in ``manual_axes``), the lists of many
clouds (``neighbour_lists``) and the public ``knn`` (``search``).
"""
