"""Time geom_jax.metrics.layer_similarity on every layer pair of a stack.

A synthetic stack [L, N, D] of N inputs (not tokens of one prompt: a dataset-level
cloud) that drift through the layers by residual updates, with a growing common
offset; the chosen measures (default: every registered one) for all L x L pairs, or
L x L' against a second stack with --other_layers, with --null_permutations a
permutation null of each. Prints, per measure and for all together, the compile
time and the min / median of the timed runs with process CPU, then peak RSS and the
load average before and after.

  python -m benchmarks.bench_similarity --layers=31 --points=5000 --dim=576 \
      --null_permutations=100
"""

import os
import resource
import statistics
import time

import numpy as np
from absl import app, flags

from geom_jax import cli

cli.quiet_startup()

FLAGS = flags.FLAGS
flags.DEFINE_integer("layers", 31, "Layers L of the stack.")
flags.DEFINE_integer("points", 5000, "Points N per layer.")
flags.DEFINE_integer("dim", 576, "Feature dimension D.")
flags.DEFINE_integer("other_layers", 0, "Layers of a second stack (0: the stack with itself).")
flags.DEFINE_integer("other_dim", 0, "Feature dimension of the second stack (0: --dim).")
flags.DEFINE_integer("k", 10, "Neighbours for mutual_knn and cknna.")
flags.DEFINE_list("measures", None, "Measures to compute (default: every registered one).")
flags.DEFINE_integer("null_permutations", 0, "Permutations of the null (0: none).")
flags.DEFINE_boolean("each", True, "Also time each measure alone (before all together).")
flags.DEFINE_enum("cka_route", "auto", ["auto", "features", "kernels"], "CKA route.")
flags.DEFINE_integer("repeats", 1, "Timed runs after the first (compiling) one.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic stack.")


def synthetic_stack(layers, n, dim, seed):
    """[L, N, D] float32: inputs on a curved 10-d manifold, evolved layer by layer."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 10)).astype(np.float32)
    h = np.tanh(latent @ (rng.standard_normal((10, dim)).astype(np.float32) / np.sqrt(10.0)))
    offset = rng.standard_normal(dim).astype(np.float32)
    out = np.empty((layers, n, dim), np.float32)
    for layer in range(layers):
        mix = rng.standard_normal((dim, dim)).astype(np.float32) * (0.6 / np.sqrt(dim))
        h = h + 0.4 * np.tanh(h @ mix) + 0.03 * rng.standard_normal((n, dim)).astype(np.float32)
        out[layer] = h + offset * (1.0 + layer / max(layers - 1, 1))
    return out


def load_avg():
    return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def main(argv):
    del argv
    import jax

    from geom_jax.metrics.similarity import cka_hsic, layer_pairs

    stack = synthetic_stack(FLAGS.layers, FLAGS.points, FLAGS.dim, FLAGS.seed)
    other = None
    if FLAGS.other_layers:
        d2 = FLAGS.other_dim or FLAGS.dim
        other = synthetic_stack(FLAGS.other_layers, FLAGS.points, d2, FLAGS.seed + 1)
    lb, db = (stack.shape[0], stack.shape[2]) if other is None else other.shape[0::2]
    route = cka_hsic.pick_route(
        FLAGS.cka_route, FLAGS.points, FLAGS.layers, FLAGS.dim, lb, db, other is None
    )
    cost = cka_hsic.cka_cost(FLAGS.points, FLAGS.layers, FLAGS.dim, lb, db, other is None)
    print(f"stack {stack.shape}, other {None if other is None else other.shape}, k={FLAGS.k}")
    print(
        f"CKA route {route} (FLOPs: features {cost['features']:.2e}, kernels {cost['kernels']:.2e})"
    )
    print("before:", load_avg())

    from geom_jax.metrics.similarity import measure

    names = tuple(FLAGS.measures or measure.names())

    def run(chosen):
        declared = {o.name for m in chosen for o in measure.get(m).options}
        k = FLAGS.k if "k" in declared else None
        route = FLAGS.cka_route if "route" in declared else None
        out = layer_pairs.layer_similarity(
            stack,
            other,
            measures=chosen,
            k=k,
            cka_route=route,
            null_permutations=FLAGS.null_permutations,
        )
        return jax.block_until_ready(out)

    def timed(chosen, label):
        t = time.perf_counter()
        out = run(chosen)
        first = time.perf_counter() - t
        walls, cpus = [], []
        for _ in range(FLAGS.repeats):
            w, c = time.perf_counter(), time.process_time()
            run(chosen)
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
        steady = (
            f"; min {min(walls):.2f} s, median {statistics.median(walls):.2f} s over "
            f"{len(walls)} runs (process CPU min {min(cpus):.2f} s)"
            if walls
            else ""
        )
        print(f"{label}: compile + first run {first:.2f} s{steady}", flush=True)
        return out

    pairs = f"{FLAGS.layers} x {lb if other is not None else FLAGS.layers} pairs"
    nulls = f", {FLAGS.null_permutations} permutations" if FLAGS.null_permutations else ""
    if FLAGS.each and len(names) > 1:
        for name in names:
            timed((name,), f"{name} ({pairs}{nulls})")
    out = timed(names, f"all {len(names)} measures ({pairs}{nulls})")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print("after:", load_avg())
    for name, v in out.items():
        v = np.asarray(v)
        if "/" in name:
            if name.endswith("/max_p_value"):
                print(f"{name}: {float(v):.4f}")
            continue
        print(
            f"{name}: diagonal mean {np.mean(np.diag(v)) if other is None else float('nan'):.6f}, "
            f"[0, -1] {v[0, -1]:.6f}, min {v.min():.6f}"
        )


if __name__ == "__main__":
    app.run(main)
