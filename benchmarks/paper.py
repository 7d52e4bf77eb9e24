"""The paper's CPU path, operation for operation: the ``paper`` benchmark column.

Per layer: scikit-learn ``euclidean_distances`` and ``cosine_similarity``
(float32 N x N matrices); duplicate tokens removed with ``np.unique`` (first
occurrence kept); GRIDE as DADApy 0.3.4 computes it from the row-sorted
distance matrix of the unique points (bisection per scale in float64, the
scalar steps of ``tests.reference.oracle``); TwoNN from the same sorted rows.
Neighbourhood overlap as the paper's code runs it: one ``argsort`` of each
layer's distance matrix, then for every token a boolean flag array per layer
grown one neighbour at a time for k = 1..max_k, counting the neighbours
flagged in both layers.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.metrics.pairwise import cosine_similarity, euclidean_distances

from tests.reference import oracle

STAGES = ("distances", "cosine", "gride", "twonn", "overlap")


def first_occurrences(points):
    _, first = np.unique(points, axis=0, return_index=True)
    return np.sort(first)


def gride_layer(dist, range_max=256):
    """GRIDE (ids, errs, scales) and the row-sorted distances of unique points' distance matrix."""
    sorted_d = np.sort(dist, axis=1)
    ids, errs, scales = oracle.gride_from_sorted(sorted_d[:, 1:], range_max)
    return ids, errs, scales, sorted_d


def twonn_layer(sorted_d, discard_fraction=0.1):
    """TwoNN base (linear fit through the origin on the kept fraction) from row-sorted distances."""
    n = sorted_d.shape[0]
    log_mu = np.log(sorted_d[:, 2] / sorted_d[:, 1])
    n_eff = int(n * (1.0 - discard_fraction))
    x = np.sort(log_mu)[:n_eff]
    y = -np.log(1.0 - np.arange(1, n_eff + 1) / n)
    return float(x @ y / (x @ x))


def overlap_pair(order_a, order_b, max_k=32):
    """chi_k for k = 1..max_k (element k-1) from two layers' row argsorts.

    Column 0 of each argsort is the point itself (distance 0). For each token
    the neighbours of both layers are flagged one rank at a time; a new
    neighbour already flagged in the other layer adds one shared neighbour.
    """
    n = order_a.shape[0]
    shared = np.zeros(max_k)
    for i in range(n):
        in_a = np.zeros(n, bool)
        in_b = np.zeros(n, bool)
        count = 0
        for k in range(1, max_k + 1):
            a, b = order_a[i, k], order_b[i, k]
            in_a[a] = True
            count += in_b[a]
            in_b[b] = True
            count += in_a[b]
            shared[k - 1] += count
    return shared / (n * np.arange(1, max_k + 1))


def paper_layer_geometry(hidden, range_max=256, max_k=32, twonn_discard_fraction=0.1):
    """All metrics for one prompt's hidden states [L, N, D], the paper's way.

    Returns a dict of arrays (gride_ids/errs/scales [L, S], twonn [L],
    overlap [L-1, max_k], cos_mean/cos_std [L]) and "times": seconds per
    stage (STAGES).
    """
    hidden = np.asarray(hidden, np.float32)
    times = dict.fromkeys(STAGES, 0.0)
    orders, ids, errs, scales, tw, cm, cs = [], [], [], [], [], [], []
    for x in hidden:
        t = time.perf_counter()
        dist = euclidean_distances(x)
        times["distances"] += time.perf_counter() - t

        t = time.perf_counter()
        cos = cosine_similarity(x)
        cm.append(float(cos.mean()))
        cs.append(float(cos.std()))
        times["cosine"] += time.perf_counter() - t

        t = time.perf_counter()
        keep = first_occurrences(x)
        unique_dist = dist[np.ix_(keep, keep)].astype(np.float64)
        i, e, s, sorted_d = gride_layer(unique_dist, range_max)
        ids.append(i)
        errs.append(e)
        scales.append(s)
        times["gride"] += time.perf_counter() - t

        t = time.perf_counter()
        tw.append(twonn_layer(sorted_d, twonn_discard_fraction))
        times["twonn"] += time.perf_counter() - t

        t = time.perf_counter()
        orders.append(np.argsort(dist, axis=1)[:, : max_k + 1])
        times["overlap"] += time.perf_counter() - t

    t = time.perf_counter()
    overlap = np.stack([overlap_pair(a, b, max_k) for a, b in zip(orders[:-1], orders[1:])])
    times["overlap"] += time.perf_counter() - t
    return dict(
        gride_ids=np.stack(ids),
        gride_errs=np.stack(errs),
        gride_scales=np.stack(scales),
        twonn=np.array(tw),
        overlap=overlap,
        cos_mean=np.array(cm),
        cos_std=np.array(cs),
        times=times,
    )
