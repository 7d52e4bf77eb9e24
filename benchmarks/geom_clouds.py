"""The geom-jax side of ``benchmarks/bench_clouds.py``, in its own process (for its peak RSS).

  python -m benchmarks.geom_clouds HIDDEN.npy OUT.npz --range_max=256 --k=32 --repeats=1

Runs ``layer_geometry`` (the paper's observables) on HIDDEN [L, N, D] once to
compile (``first_s``: compilation and the first run), then ``repeats`` timed
runs (``seconds``: the fastest). OUT also holds gride_ids / gride_errs /
gride_scales [L, S], overlap [L-1] (chi_k at k), ``cpu_s`` of the timed runs,
``peak_rss`` (bytes, this process's maximum resident set, measured before the floor)
and ``floor_s``: the float32 products of the symmetric path's half-band Gram tiles
alone, timed the same way (`symmetric_floor`).
"""

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import benchmarking
from geom_jax import metrics
from geom_jax.metrics import compute
from geom_jax.metrics.backends import blocked_context
from geom_jax.metrics.neighbours import blocked_rows, symmetric_rows


def symmetric_floor(hidden, block, repeats):
    """Seconds (min of repeats, after a compiling call) of the float32 Gram products the
    streaming path computes, alone: every layer's half-band tiles
    (symmetric_rows.tile), each reduced to one number so that none is skipped."""
    n = hidden.shape[1]
    nb, _, width = symmetric_rows.tiling(n, block)

    @jax.jit
    def products(h):
        def layer(x):
            rows, cols = symmetric_rows.tile_operands(x, block)
            body = lambda i, acc: acc + jnp.sum(symmetric_rows.tile(rows, cols, i, block, width))
            return lax.fori_loop(0, nb, body, jnp.float32(0))

        return lax.map(layer, h)

    jax.block_until_ready(products(hidden))
    times = []
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        jax.block_until_ready(products(hidden))
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hidden")
    parser.add_argument("out")
    parser.add_argument("--range_max", type=int, default=256)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--neighbour_path", default="auto")
    parser.add_argument("--block_rows", type=int, default=None)
    args = parser.parse_args()
    hidden = jax.device_put(np.load(args.hidden))

    def run():
        geo = metrics.layer_geometry(
            hidden,
            range_max=args.range_max,
            max_k=args.k,
            neighbour_path=args.neighbour_path,
            block_rows=args.block_rows,
            validate=False,
        )
        return jax.block_until_ready(geo)

    geo, first, runs, cpu = benchmarking.timed_runs(run, args.repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n_layers, n = hidden.shape[0], hidden.shape[1]
    chunk = compute.auto_layer_chunk(n_layers, 1, n)
    blocked = blocked_context.use_blocked(args.neighbour_path, chunk, n)
    block = symmetric_rows.block_for(n, blocked_rows.block_rows_for(n, args.block_rows))
    floor = symmetric_floor(hidden, block, args.repeats)
    np.savez(
        args.out,
        floor_s=floor,
        path="blocked" if blocked else "dense",
        first_s=first,
        seconds=min(runs),
        runs=np.asarray(runs),
        cpu_s=cpu,
        peak_rss=peak,
        gride_ids=np.asarray(geo.gride_ids),
        gride_errs=np.asarray(geo.gride_errs),
        gride_scales=np.asarray(geo.gride_scales),
        overlap=np.asarray(geo.overlap)[:, args.k - 1],
    )


if __name__ == "__main__":
    main()
