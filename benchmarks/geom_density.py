"""The geom-jax side of ``benchmarks/bench_density.py``, in its own process (for its peak RSS).

  python -m benchmarks.geom_density HIDDEN.npy OUT.npz --part=density --repeats=1

Runs ``layer_geometry`` on HIDDEN [L, N, D] with the observables of one part
(``density``: ``density,adp``; ``battery``: ``id_battery``) once to compile
(``first_s``: compilation and the first run), then ``repeats`` timed runs
(``seconds``: the fastest). OUT holds the fields the peers also give, ``cpu_s`` of the
timed runs and ``peak_rss`` (bytes, this process's maximum resident set).
"""

import argparse
import resource

import jax
import numpy as np

from benchmarks import benchmarking
from geom_jax import metrics

PARTS = {"density": "density,adp", "battery": "id_battery"}
FIELDS = {
    "density": ("density_id", "knn_log_density", "pak_log_density", "adp_labels", "adp_clusters"),
    "battery": (
        "mada_id",
        "mom_id",
        "corrint_id",
        "ess_id",
        "fishers_id",
        "lpca_id",
        "binomial_id",
        "phd_id",
    ),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hidden")
    parser.add_argument("out")
    parser.add_argument("--part", choices=tuple(PARTS), default="density")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--neighbour_path", default="auto")
    args = parser.parse_args()
    hidden = jax.device_put(np.load(args.hidden))

    def run():
        geo = metrics.layer_geometry(
            hidden,
            observables=PARTS[args.part],
            neighbour_path=args.neighbour_path,
            validate=False,
        )
        return jax.block_until_ready(geo)

    geo, first, runs, cpu = benchmarking.timed_runs(run, args.repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fields = {k: np.asarray(geo[k]) for k in FIELDS[args.part] if k in geo}
    np.savez(
        args.out,
        first_s=first,
        seconds=min(runs) if runs else first,
        cpu_s=cpu,
        peak_rss=peak,
        **fields,
    )


if __name__ == "__main__":
    main()
