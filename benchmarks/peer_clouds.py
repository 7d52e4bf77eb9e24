"""The peer of ``benchmarks/bench_clouds.py``: DADApy 0.3.4 on dataset-scale clouds.

What the papers that measure one point per prompt at every layer run (Cheng
et al. ICLR 2025, Valeriani et al. NeurIPS 2023, Doimo et al. 2024): per layer
``Data(X).compute_distances(maxk=range_max)`` (scikit-learn's exact k-NN) and
``return_id_scaling_gride(range_max=range_max)``; between consecutive layers
``return_data_overlap(dist_indices=..., k=k)``. Runs in the ``make bench-env``
environment as a subprocess; never imports geom_jax.

  .bench-venv/bin/python benchmarks/peer_clouds.py HIDDEN.npy OUT.npz --range_max=256 --k=32

HIDDEN is [L, N, D] float32. OUT holds gride_ids / gride_errs / gride_scales
[L, S], overlap [L-1] (chi_k), ``seconds`` (wall time of the computation,
loading and imports excluded), ``cpu_s`` and ``peak_rss`` (bytes, this
process's maximum resident set, imports and the loaded points included).
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np


def peer_clouds(hidden, range_max=256, k=32):
    from dadapy import Data

    ids, errs, scales, data = [], [], [], []
    for x in hidden:
        d = Data(coordinates=x, maxk=range_max, verbose=False)
        d.compute_distances(maxk=range_max)
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
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hidden")
    parser.add_argument("out")
    parser.add_argument("--range_max", type=int, default=256)
    parser.add_argument("--k", type=int, default=32)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import dadapy  # noqa: F401

    hidden = np.load(args.hidden)
    cpu, wall = time.process_time(), time.perf_counter()
    arrays = peer_clouds(hidden, args.range_max, args.k)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.savez(args.out, seconds=wall, cpu_s=cpu, peak_rss=peak, **arrays)


if __name__ == "__main__":
    main()
