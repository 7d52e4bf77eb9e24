"""Benchmark geom_jax.metrics.layer_geometry against the paper's CPU path.

Times the jitted layer_geometry (after compilation, block_until_ready) and
geom_jax.baseline.metrics_numpy.paper_layer_geometry (scikit-learn
distances and cosine, NumPy/SciPy GRIDE bisection, the paper's Python
overlap loop) on the same hidden-state stack [L, N, D], checks that both
agree, prints per-stage times and, as the last line, the speed-up.

  python experiments/bench_metrics.py --layers=31 --tokens=1024 --dim=576
  python experiments/bench_metrics.py --input=hidden.npy   # a saved [L, N, D] stack
"""

import os
import resource
import statistics
import sys
import time

import numpy as np
from absl import app, flags

from geom_jax import cli

cli.quiet_startup()

FLAGS = flags.FLAGS
flags.DEFINE_integer("layers", 31, "Layers L of the synthetic stack.")
flags.DEFINE_integer("tokens", 1024, "Tokens N per layer of the synthetic stack.")
flags.DEFINE_integer("dim", 576, "Hidden size D of the synthetic stack.")
flags.DEFINE_integer(
    "repeats", 5, "Timed runs of layer_geometry after compilation (min is reported)."
)
flags.DEFINE_integer("baseline_repeats", 1, "Timed runs of the NumPy baseline.")
flags.DEFINE_string(
    "input",
    None,
    "A .npy / .npz hidden-state stack [L, N, D] (or [1, L, N, D]) instead of synthetic data.",
)
flags.DEFINE_string(
    "input_key", None, "Array name inside an .npz input (default: the first array)."
)
flags.DEFINE_integer(
    "range_max", None, "GRIDE range_max (default: the largest N supports, up to 256)."
)
flags.DEFINE_integer("max_k", 32, "Neighbourhood-overlap max_k.")
flags.DEFINE_integer(
    "layer_chunk",
    0,
    "layer_chunk for layer_geometry (0 = automatic, about 8 MiB of Gram per chunk).",
)
flags.DEFINE_enum("selection", "auto", ["auto", "host", "xla"], "Neighbour-selection backend.")
flags.DEFINE_bool("baseline", True, "Run the NumPy baseline (the speed-up needs it).")
flags.DEFINE_bool("stages", True, "Also time the JAX stages separately.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic stack.")


def synthetic_hidden(layers, tokens, dim, seed=0):
    """A stack [L, N, D] shaped like LLM hidden states.

    Tokens sit near a curved 12-dimensional manifold, evolve through the
    layers by small residual updates (so consecutive layers share
    neighbourhoods), plus isotropic noise, a large common offset that grows
    with depth, a few "massive activation" dimensions, and an outlying first
    token, as in real residual streams.
    """
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((tokens, 12))
    h = 2.0 * np.tanh(latent @ (rng.standard_normal((12, dim)) / np.sqrt(12.0)))
    offset = rng.standard_normal(dim)
    offset[:4] *= 40.0
    out = np.empty((layers, tokens, dim), np.float32)
    for layer in range(layers):
        mix = rng.standard_normal((dim, dim)) * (0.6 / np.sqrt(dim))
        h = h + 0.4 * np.tanh(h @ mix) + 0.03 * rng.standard_normal((tokens, dim))
        x = h + offset * (1.0 + 2.0 * layer / max(layers - 1, 1))
        x[0] *= 25.0
        out[layer] = x
    return out


def load_input(path, key=None):
    data = np.load(path)
    if isinstance(data, np.lib.npyio.NpzFile):
        data = data[key or data.files[0]]
    data = np.asarray(data, np.float32)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 3:
        raise app.UsageError(f"--input must hold a [L, N, D] stack, got shape {data.shape}")
    return data


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def load_avg():
    return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def timed(fn, repeats):
    """(min wall, median wall, min cpu) seconds of fn() over repeats runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), statistics.median(walls), min(cpus)


def jax_stage_times(hidden, range_max, max_k, selection, repeats):
    """Each stage of layer_geometry jitted on its own (their sum exceeds the fused total)."""
    import jax
    import jax.numpy as jnp

    from geom_jax.metrics import (
        cosine,
        distances,
        intrinsic_dimension,
        neighbors,
        overlap,
        unique,
        validation,
    )

    x = jnp.asarray(hidden)
    valid = jnp.ones(x.shape[:-1], bool)
    n = x.shape[-2]
    ranks = intrinsic_dimension.gride_ranks(validation.n_scales(n, range_max))
    n_cand = neighbors.num_candidates(max_k, n)

    def gram_cos(x, v):
        g, c = distances.centred_gram(x, v)
        return g, cosine.cosine_stats_from_gram(x, v, g, c)

    stages = {}

    def run(name, fn, *args):
        fn = jax.jit(fn)
        out = jax.block_until_ready(fn(*args))
        stages[name] = timed(lambda: jax.block_until_ready(fn(*args)), repeats)[0]
        return out

    keep = run("duplicates (hash + sort)", unique.first_occurrence, x, valid)
    gram, _ = run("centred Gram + cosine", gram_cos, x, valid)
    near, ranked = run(
        f"selection ({selection})",
        lambda g, v, k: neighbors.select_neighbors(
            g, v, k, k_near=n_cand, ranks=ranks, method=selection
        ),
        gram,
        valid,
        keep,
    )
    high = [i for i, r in enumerate(ranks) if r > max_k]
    exact_near, _ = run(
        f"refinement ({n_cand} + {len(high)} pairs/token)",
        lambda x, a, b, v, k: (
            neighbors.refine_candidates(x, a, v),
            neighbors.refine_candidates(x, b, k),
        ),
        x,
        near,
        ranked[..., high],
        valid,
        keep,
    )
    sq, idx = run(
        f"re-ranking ({selection})",
        lambda e, c: neighbors.sort_candidates(e, c, max_k, selection),
        exact_near,
        near,
    )
    exact_ranked = neighbors.refine_candidates(x, ranked, keep)
    r = jnp.sqrt(neighbors.sort_candidates(exact_ranked, ranked, len(ranks))[0])
    run(
        "GRIDE + TwoNN",
        lambda r, k: (
            intrinsic_dimension.gride_from_neighbors(r, k),
            intrinsic_dimension.twonn_from_neighbors(r[..., 0], r[..., 1], k),
        ),
        r,
        keep,
    )
    run(
        "overlap", lambda a, b, v: overlap.overlap_from_lists(a, b, v), idx[:-1], idx[1:], valid[1:]
    )
    return stages


def agreement(geo, base):
    """Largest deviations between JAX and baseline results, and whether they are in tolerance."""

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        ok = np.isfinite(b)
        return float(np.max(np.abs(a[ok] - b[ok]) / np.abs(b[ok]))) if ok.any() else 0.0

    dev = {
        "gride_ids (rel)": rel(geo.gride_ids, base["gride_ids"]),
        "gride_errs (rel)": rel(geo.gride_errs, base["gride_errs"]),
        "gride_scales (rel)": rel(geo.gride_scales, base["gride_scales"]),
        "twonn (rel)": rel(geo.twonn, base["twonn"]),
        "cos_mean (abs)": float(np.max(np.abs(np.asarray(geo.cos_mean) - base["cos_mean"]))),
        "cos_std (abs)": float(np.max(np.abs(np.asarray(geo.cos_std) - base["cos_std"]))),
        "overlap (max abs)": float(np.max(np.abs(np.asarray(geo.overlap) - base["overlap"]))),
        "overlap (mean abs)": float(np.mean(np.abs(np.asarray(geo.overlap) - base["overlap"]))),
    }
    # The baseline rounds sklearn's distances to float32 and argsorts without a
    # stable tie rule (and, with duplicate tokens, may count a point as its own
    # neighbour), so a few neighbours may differ from ours: one token at k = 1
    # is 1/N. Overlap is judged on its mean deviation, with a loose cap.
    limits = {
        "gride_ids (rel)": 1e-3,
        "gride_errs (rel)": 1e-2,
        "gride_scales (rel)": 1e-3,
        "twonn (rel)": 1e-3,
        "cos_mean (abs)": 1e-5,
        "cos_std (abs)": 1e-5,
        "overlap (max abs)": 5e-2,
        "overlap (mean abs)": 1e-3,
    }
    return dev, all(dev[k] <= limits[k] for k in dev), limits


def main(argv):
    del argv
    import jax

    from geom_jax import metrics
    from geom_jax.baseline import metrics_numpy

    if FLAGS.input:
        hidden = load_input(FLAGS.input, FLAGS.input_key)
        source = FLAGS.input
    else:
        hidden = synthetic_hidden(FLAGS.layers, FLAGS.tokens, FLAGS.dim, FLAGS.seed)
        source = "synthetic (12-d manifold, residual layers, common offset, massive dims)"
    n_layers, n_tokens, dim = hidden.shape
    chunk = FLAGS.layer_chunk or None
    print(f"input: {source}, [L, N, D] = [{n_layers}, {n_tokens}, {dim}]")
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; {load_avg()}"
    )
    FLAGS.range_max = metrics.check_sizes(n_tokens, range_max=FLAGS.range_max, max_k=FLAGS.max_k)
    metrics.validate_hidden(hidden, range_max=FLAGS.range_max, max_k=FLAGS.max_k)

    fn = jax.jit(
        lambda h: metrics.layer_geometry(
            h,
            range_max=FLAGS.range_max,
            max_k=FLAGS.max_k,
            layer_chunk=chunk,
            selection=FLAGS.selection,
        )
    )
    x = jax.device_put(hidden)
    start = time.perf_counter()
    geo = jax.block_until_ready(fn(x))
    print(f"layer_geometry compile + first run: {time.perf_counter() - start:.2f} s")
    jax_min, jax_med, jax_cpu = timed(lambda: jax.block_until_ready(fn(x)), FLAGS.repeats)
    print(
        f"layer_geometry ({FLAGS.selection} selection): min {jax_min:.3f} s, "
        f"median {jax_med:.3f} s "
        f"over {FLAGS.repeats} runs (process CPU {jax_cpu:.3f} s); {load_avg()}"
    )
    if FLAGS.stages:
        print("JAX stages, each jitted separately:")
        for name, sec in jax_stage_times(
            hidden, FLAGS.range_max, FLAGS.max_k, FLAGS.selection, FLAGS.repeats
        ).items():
            print(f"  {name:38s} {sec:7.3f} s")

    print(f"peak RSS so far: {peak_rss_gib():.2f} GiB")
    if not FLAGS.baseline:
        print("baseline skipped (--nobaseline): no speed-up")
        return
    base_times = []
    for _ in range(FLAGS.baseline_repeats):
        start = time.perf_counter()
        base = metrics_numpy.paper_layer_geometry(
            hidden, range_max=FLAGS.range_max, max_k=FLAGS.max_k
        )
        base_times.append(time.perf_counter() - start)
    base_total = min(base_times)
    print(f"baseline (paper's CPU path, NumPy/scikit-learn): {base_total:.2f} s; {load_avg()}")
    for name, sec in base["times"].items():
        print(f"  {name:38s} {sec:7.3f} s")
    dev, ok, limits = agreement(geo, base)
    print("agreement with the baseline: " + ("OK" if ok else "FAILED"))
    for name, value in dev.items():
        print(f"  {name:22s} {value:.2e} (limit {limits[name]:.0e})")
    print(
        f"speed-up: {base_total / jax_min:.1f}x "
        f"(baseline {base_total:.2f} s / layer_geometry {jax_min:.3f} s)"
    )
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
