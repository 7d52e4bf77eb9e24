"""The peers of ``benchmarks/bench_clouds.py``: DADApy 0.3.4, alone or on FAISS's lists.

What the papers that measure one point per prompt at every layer run (Cheng et
al. ICLR 2025, Valeriani et al. NeurIPS 2023, Doimo et al. 2024): per layer
``Data(X).compute_distances(maxk=range_max)`` (scikit-learn's exact k-NN) and
``return_id_scaling_gride(range_max=range_max)``; between consecutive layers
``return_data_overlap(dist_indices=..., k=k)``. With ``--knn=faiss`` the lists
come from FAISS's exact search instead (``faiss.IndexFlatL2``, float32, every
core), handed to DADApy as ``Data(distances=(dist, ind))``: what a user who knows
FAISS runs. Runs in the ``make bench-env`` environment as a subprocess; never
imports geom_jax.

  .bench-venv/bin/python benchmarks/peer_clouds.py HIDDEN.npy OUT.npz --range_max=256 --k=32 \
      [--knn=faiss]

HIDDEN is [L, N, D] float32. OUT holds gride_ids / gride_errs / gride_scales
[L, S], overlap [L-1] (chi_k), ``seconds`` (wall time of the computation,
loading and imports excluded), ``knn_s`` (of it, the k-NN search), ``cpu_s`` and
``peak_rss`` (bytes, this process's maximum resident set, imports and the loaded
points included).
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np


def faiss_lists(x, k):
    """Exact k-NN lists of x [N, D] with the point itself first: (distances float64,
    indices int64) [N, k + 1], from FAISS's flat L2 index (squared float32 distances)."""
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(x, np.float32))
    d2, ind = index.search(np.ascontiguousarray(x, np.float32), k + 1)
    return np.sqrt(np.maximum(d2, 0.0)).astype(np.float64), ind.astype(np.int64)


def peer_clouds(hidden, range_max=256, k=32, knn="dadapy"):
    from dadapy import Data

    ids, errs, scales, data = [], [], [], []
    knn_s = 0.0
    for x in hidden:
        t = time.perf_counter()
        if knn == "faiss":
            d = Data(distances=faiss_lists(x, range_max), maxk=range_max, verbose=False)
        else:
            d = Data(coordinates=x, maxk=range_max, verbose=False)
            d.compute_distances(maxk=range_max)
        knn_s += time.perf_counter() - t
        i, e, s = d.return_id_scaling_gride(range_max=range_max)
        ids.append(i)
        errs.append(e)
        scales.append(s)
        data.append(d)
    overlap = [
        a.return_data_overlap(dist_indices=b.dist_indices, k=k) for a, b in zip(data, data[1:])
    ]
    return dict(
        gride_ids=np.stack(ids),
        gride_errs=np.stack(errs),
        gride_scales=np.stack(scales),
        overlap=np.asarray(overlap, np.float64),
        knn_s=knn_s,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hidden")
    parser.add_argument("out")
    parser.add_argument("--range_max", type=int, default=256)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--knn", choices=("dadapy", "faiss"), default="dadapy")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import dadapy  # noqa: F401

    hidden = np.load(args.hidden)
    cpu, wall = time.process_time(), time.perf_counter()
    arrays = peer_clouds(hidden, args.range_max, args.k, args.knn)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.savez(args.out, seconds=wall, cpu_s=cpu, peak_rss=peak, **arrays)


if __name__ == "__main__":
    main()
