"""Row-blocked GRIDE at a large range against tests/fixtures/gride_large_range.npz (DADApy).

  python -m benchmarks.check_gride_large_range --points=20000 --range_max=8192

Prints the largest relative deviation of gride_ids / gride_errs / gride_scales over the
scales, the time and the peak RSS; exits 1 beyond 1e-4 (the issue's limit).
"""

import argparse
import os
import resource
import sys
import time

import numpy as np

from geom_jax import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "gride_large_range.npz")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20000, choices=(20000, 5000))
    parser.add_argument("--range_max", type=int, default=8192)
    args = parser.parse_args()
    ref = np.load(FIXTURE)
    t = time.perf_counter()
    geo = metrics.layer_geometry(
        ref["points"][None, : args.points],
        observables="gride",
        range_max=args.range_max,
        neighbour_path="blocked",
    )
    worst = 0.0
    for field in ("gride_ids", "gride_errs", "gride_scales"):
        got, want = np.asarray(geo[field])[0], ref[f"{field}_{args.points}"]
        dev = float(np.max(np.abs(got - want) / np.abs(want)))
        worst = max(worst, dev)
        print(f"{field}: max relative deviation {dev:.1e} over {len(want)} scales")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{time.perf_counter() - t:.1f} s (compilation included), peak RSS {peak:.2f} GiB")
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
