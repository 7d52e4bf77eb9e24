"""The paper's CPU path for the geometry metrics, as a benchmark baseline.

Reconstructed from the paper's description and DADApy 0.3.4's conventions
(not copied): scikit-learn euclidean_distances and cosine_similarity per
layer, duplicate removal with np.unique (first occurrence kept), GRIDE by a
per-layer, per-scale Python bisection loop in float64 on the sorted distance
matrix, TwoNN on the same sorted distances, and the paper's per-token Python
neighbourhood-overlap loop: for each layer pair and each k, argsort of the two
distance matrices and a Python set intersection of the k-neighbour lists
token by token. That loop is deliberately left as slow as the original (on
this machine it matches the ~0.9 s per layer pair measured for the paper's
own code in issue 2).
"""

import math
import time

import numpy as np
from sklearn.metrics.pairwise import cosine_similarity, euclidean_distances

BISECTION_LO = 1e-3
BISECTION_HI = 1e3
BISECTION_TOL = 1e-7


def _first_occurrences(points):
    _, first = np.unique(points, axis=0, return_index=True)
    return np.sort(first)


def _neg_score(dim, log_mu, n1, n2):
    one_minus = np.maximum(1.0 - np.exp(-dim * log_mu), 2 * BISECTION_TOL)
    total = np.sum(((1 - n2 + n1) / one_minus + n2 - 1.0) * log_mu)
    return total - (log_mu.size - 1) / dim


def _gride_one_scale(mu, n1, n2):
    median = np.median(mu)
    cut = median + 20.0 * (np.percentile(mu, 95) - median)
    log_kept = np.log(mu[mu < cut])
    lo, hi = BISECTION_LO, BISECTION_HI
    s_hi = _neg_score(hi, log_kept, n1, n2)
    while abs(hi - lo) > BISECTION_TOL:
        mid = 0.5 * (lo + hi)
        if _neg_score(mid, log_kept, n1, n2) * s_hi > 0:
            hi = mid
        else:
            lo = mid
    dim = 0.5 * (lo + hi)
    log_mu = np.log(mu)
    p = mu ** (-dim)
    one_minus = np.maximum(1.0 - p, 1e-15)
    fisher = mu.size / dim**2 + (n2 - n1 - 1) * np.sum((log_mu / one_minus) ** 2 * p)
    return dim, 1.0 / math.sqrt(fisher)


def gride_layer(dist, range_max=256):
    """GRIDE (ids, errs, scales) from a full distance matrix of unique points."""
    n = dist.shape[0]
    n_scales = int(math.floor(math.log2(min(n, range_max))))
    order = np.argsort(dist, axis=1)
    sorted_d = np.take_along_axis(dist, order, axis=1)
    ids, errs, scales = [], [], []
    for s in range(n_scales):
        n1, n2 = 2**s, 2 ** (s + 1)
        if n2 > n - 1:
            ids.append(np.nan)
            errs.append(np.nan)
            scales.append(np.nan)
            continue
        r1, r2 = sorted_d[:, n1], sorted_d[:, n2]
        dim, err = _gride_one_scale(r2 / r1, n1, n2)
        ids.append(dim)
        errs.append(err)
        scales.append(np.mean(0.5 * (r1 + r2)))
    return np.array(ids), np.array(errs), np.array(scales), sorted_d


def twonn_layer(sorted_d, discard_fraction=0.1):
    """TwoNN base (linear fit on the kept fraction) from row-sorted distances."""
    n = sorted_d.shape[0]
    log_mu = np.log(sorted_d[:, 2] / sorted_d[:, 1])
    n_eff = int(n * (1.0 - discard_fraction))
    x = np.sort(log_mu)[:n_eff]
    y = -np.log(1.0 - np.arange(1, n_eff + 1) / n)
    return float(x @ y / (x @ x))


def overlap_pair(dist_a, dist_b, max_k=32):
    """The paper's loop: chi_k for k = 1..max_k (element k-1).

    For each k, argsort both distance matrices (the point itself comes
    first at distance 0), keep columns 1..k and intersect the two neighbour
    sets token by token in Python.
    """
    n = dist_a.shape[0]
    out = np.zeros(max_k)
    for k in range(1, max_k + 1):
        nn_a = np.argsort(dist_a, axis=1)[:, 1 : k + 1]
        nn_b = np.argsort(dist_b, axis=1)[:, 1 : k + 1]
        shared = 0
        for i in range(n):
            shared += len(set(nn_a[i]) & set(nn_b[i]))
        out[k - 1] = shared / (n * k)
    return out


def paper_layer_geometry(hidden, range_max=256, max_k=32, twonn_discard_fraction=0.1):
    """All metrics for one prompt's hidden states [L, N, D] (NumPy, the paper's way).

    Returns a dict of arrays (gride_ids/errs/scales [L, S], twonn [L],
    overlap [L-1, max_k], cos_mean/cos_std [L]) and "times": seconds per
    stage (distances, cosine, gride, twonn, overlap).
    """
    hidden = np.asarray(hidden, np.float32)
    n_layers = hidden.shape[0]
    times = dict(distances=0.0, cosine=0.0, gride=0.0, twonn=0.0, overlap=0.0)
    dists, ids, errs, scales, tw, cm, cs = [], [], [], [], [], [], []
    for layer in range(n_layers):
        x = hidden[layer]
        t = time.perf_counter()
        dist = euclidean_distances(x)
        times["distances"] += time.perf_counter() - t
        dists.append(dist)

        t = time.perf_counter()
        cos = cosine_similarity(x)
        cm.append(float(cos.mean()))
        cs.append(float(cos.std()))
        times["cosine"] += time.perf_counter() - t

        t = time.perf_counter()
        keep = _first_occurrences(x)
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
    overlap = np.stack([overlap_pair(a, b, max_k) for a, b in zip(dists[:-1], dists[1:])])
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
