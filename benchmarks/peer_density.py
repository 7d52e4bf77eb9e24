"""The peers of ``benchmarks/bench_density.py``: DADApy 0.3.4 and scikit-dimension 0.5.

What a researcher reproducing Doimo et al. 2024 (density and density-peak clusters per
layer) and Cheng et al. 2023/2025 (an intrinsic-dimension battery per layer) runs, one
layer at a time, with each library's defaults:

* ``--part=density``: ``Data(X, maxk=100)``, ``compute_distances(maxk=100)``
  (scikit-learn's exact k-NN), ``compute_id_2NN()``, ``compute_density_PAk()``,
  ``compute_clustering_ADP(Z, halo=False)``, then ``compute_density_kNN(16)`` (last: it
  sets every k* to 16 and replaces the log densities ADP reads);
* ``--part=battery``: scikit-dimension's ``MADA``, ``MOM``, ``CorrInt``, ``ESS``,
  ``FisherS`` and ``lPCA`` (``.fit(X).dimension_``, defaults; ESS with
  ``random_state=0``) and DADApy's ``compute_id_binomial_k(k=20, r=0.5)``.

Runs in the ``make bench-env`` environment as a subprocess; never imports geom_jax.

  .bench-venv/bin/python benchmarks/peer_density.py HIDDEN.npy OUT.npz --part=density

HIDDEN is [L, N, D] float32. OUT holds the results per layer (density: ``twonn`` [L],
``knn_log_density``, ``pak_log_density`` [L, N], ``adp_labels`` [L, N],
``adp_clusters`` [L]; battery: one [L] array per estimator), ``seconds`` (wall time of
the computation, loading and imports excluded), ``part_s`` (per estimator, battery),
``cpu_s`` and ``peak_rss`` (bytes, this process's maximum resident set).
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np

BATTERY = ("mada", "mom", "corrint", "ess", "fishers", "lpca", "binomial")


def density(hidden, z):
    from dadapy import Data

    out = {k: [] for k in ("twonn", "knn_log_density", "pak_log_density", "adp_labels")}
    for x in hidden:
        d = Data(np.asarray(x, np.float64), maxk=100, verbose=False)
        d.compute_distances(maxk=100)
        out["twonn"].append(d.compute_id_2NN()[0])
        # PAk and ADP first: compute_density_kNN sets every k* to its k and the log
        # densities ADP reads
        out["pak_log_density"].append(d.compute_density_PAk()[0])
        out["adp_labels"].append(d.compute_clustering_ADP(Z=z, halo=False))
        out["knn_log_density"].append(d.compute_density_kNN(16)[0])
    arrays = {k: np.stack(v) for k, v in out.items()}
    arrays["adp_clusters"] = np.asarray([len(np.unique(a[a >= 0])) for a in arrays["adp_labels"]])
    return arrays, {}


def _battery_one(name, x):
    import skdim
    from dadapy import Data

    if name == "binomial":
        return Data(np.asarray(x, np.float64), verbose=False).compute_id_binomial_k(20, 0.5)[0]
    est = {
        "mada": skdim.id.MADA,
        "mom": skdim.id.MOM,
        "corrint": skdim.id.CorrInt,
        "ess": lambda: skdim.id.ESS(random_state=0),
        "fishers": skdim.id.FisherS,
        "lpca": skdim.id.lPCA,
    }[name]()
    return est.fit(x).dimension_


def battery(hidden, parts):
    values = {name: [] for name in parts}
    seconds = {name: 0.0 for name in parts}
    for x in hidden:
        for name in parts:
            t = time.perf_counter()
            values[name].append(float(_battery_one(name, x)))
            seconds[name] += time.perf_counter() - t
    return {k: np.asarray(v) for k, v in values.items()}, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hidden")
    parser.add_argument("out")
    parser.add_argument("--part", choices=("density", "battery"), default="density")
    parser.add_argument("--z", type=float, default=1.65)
    parser.add_argument("--estimators", default=",".join(BATTERY))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import dadapy  # noqa: F401
    import skdim  # noqa: F401

    hidden = np.load(args.hidden)
    cpu, wall = time.process_time(), time.perf_counter()
    if args.part == "density":
        arrays, parts = density(hidden, args.z)
    else:
        arrays, parts = battery(hidden, [e for e in args.estimators.split(",") if e])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    part_s = {f"part_s/{k}": v for k, v in parts.items()}
    np.savez(args.out, seconds=wall, cpu_s=cpu, peak_rss=peak, **arrays, **part_s)


if __name__ == "__main__":
    main()
