"""Benchmark geom_jax.metrics.layer_geometry against the paper's code and a peer.

Three columns on the same hidden-state stack [L, N, D], in the same run:
``paper`` (benchmarks/paper.py: the paper's algorithm operation for
operation), ``peer`` (benchmarks/peer.py: DADApy 0.3.x kNN, GRIDE, 2NN and
data overlap plus scikit-learn cosine, in the ``make bench-env``
environment, as a subprocess) and ``geom-jax`` (the jitted layer_geometry,
after compilation). Also the time of the Gram matmuls alone (the floor on
CPU). Prints per-stage times, agreement, and as the last line the speed-up
against the peer.

  python -m benchmarks.bench_metrics --layers=31 --tokens=1024 --dim=576
  python -m benchmarks.bench_metrics --input=hidden.npy   # a saved [L, N, D] stack
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
flags.DEFINE_integer("baseline_repeats", 1, "Timed runs of the paper and peer columns.")
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
flags.DEFINE_bool("paper", True, "Run the paper column (benchmarks/paper.py).")
flags.DEFINE_bool("peer", True, "Run the peer column (needs `make bench-env`).")
flags.DEFINE_bool("stages", True, "Also time the JAX stages separately.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic stack.")
flags.DEFINE_string(
    "observables",
    "paper",
    "Observables for layer_geometry ('paper', 'all' or a comma list); other than 'paper', "
    "the paper's set is timed too, interleaved, and the ratio printed.",
)


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

    from geom_jax.metrics import validation
    from geom_jax.metrics.measures import cosine, intrinsic_dimension, overlap
    from geom_jax.metrics.neighbours import distances, duplicates, refinement
    from geom_jax.metrics.neighbours import selection as select

    x = jnp.asarray(hidden)
    valid = jnp.ones(x.shape[:-1], bool)
    n = x.shape[-2]
    ranks = intrinsic_dimension.gride_ranks(validation.n_scales(n, range_max))
    n_cand = refinement.num_candidates(max_k, n)

    def gram_cos(x, v):
        g, c = distances.centred_gram(x, v)
        return g, cosine.cosine_stats_from_gram(x, v, g, c)

    stages = {}

    def run(name, fn, *args):
        fn = jax.jit(fn)
        out = jax.block_until_ready(fn(*args))
        stages[name] = timed(lambda: jax.block_until_ready(fn(*args)), repeats)[0]
        return out

    gram, _ = run("centred Gram + cosine", gram_cos, x, valid)
    keep = run("duplicates (Gram pre-filter)", duplicates.distinct_points, x, valid, gram)
    near, ranked = run(
        f"selection ({selection})",
        lambda g, v, k: select.select_neighbours(
            g, v, k, k_near=n_cand, ranks=ranks, method=selection
        ),
        gram,
        valid,
        keep,
    )
    high = [i for i, r in enumerate(ranks) if r > max_k]
    low = np.asarray([r for r in ranks if r <= max_k]) - 1
    lists = run(
        "certified lists (uncertain rows re-ranked)",
        lambda x, g, a, v: refinement.certified_knn(x, g, a, v, max_k, selection).idx,
        x,
        gram,
        near,
        valid,
    )

    def rank_distances(x, g, a, v, b):
        knn = refinement.certified_knn(x, g, a, v, max_k, selection)
        return knn.sq_at(low, also=b)

    exact_low, exact_high = run(
        f"lists + rank distances ({len(low)} + {len(high)} pairs/token)",
        rank_distances,
        x,
        gram,
        near,
        valid,
        ranked[..., high],
    )
    r = jnp.sqrt(
        refinement.sort_candidates(
            jnp.concatenate([exact_low, exact_high], axis=-1), ranked, len(ranks)
        )[0]
    )
    run(
        "GRIDE + TwoNN",
        lambda r, k: (
            intrinsic_dimension.gride_from_neighbours(r, k),
            intrinsic_dimension.twonn_from_neighbours(
                r[..., 0], r[..., 1], k, intrinsic_dimension.TWONN_DISCARD_FRACTION.default
            ),
        ),
        r,
        keep,
    )
    run(
        "overlap",
        lambda a, b, v: overlap.overlap_from_lists(a, b, v),
        lists[:-1],
        lists[1:],
        valid[1:],
    )
    return stages


def gram_only(hidden, repeats):
    """Seconds of the centred Gram matmul of every layer alone (HIGHEST precision)."""
    import jax
    import jax.numpy as jnp

    def one(x):
        c = x - jnp.mean(x, axis=0)
        return jnp.max(jnp.einsum("nd,md->nm", c, c, precision=jax.lax.Precision.HIGHEST))

    fn = jax.jit(lambda h: jax.lax.map(one, h))
    x = jax.device_put(hidden)
    jax.block_until_ready(fn(x))
    return timed(lambda: jax.block_until_ready(fn(x)), repeats)[0]


def column(name, run, repeats):
    """Runs a reference column `repeats` times; prints it and returns (result, wall, CPU s).

    Wall and CPU seconds are the sums of its stages (the peer's subprocess
    start-up and file transfer excluded), of the fastest run.
    """
    best = None
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        out = run()
        wall = time.perf_counter() - start
        out.setdefault("cpu_s", time.process_time() - cpu)
        total = sum(out["times"].values())
        if best is None or total < best[1]:
            best = (out, total, out["cpu_s"], wall)
    out, total, cpu, wall = best
    print(
        f"{name}: {total:.2f} s in its stages, process CPU {cpu:.2f} s "
        f"({wall:.2f} s with start-up and I/O); {load_avg()}"
    )
    for stage, sec in out["times"].items():
        print(f"  {stage:38s} {sec:7.3f} s")
    return out, total, cpu


def report_agreement(name, geo, ref):
    from benchmarks import benchmarking

    dev = benchmarking.deviations(geo, ref)
    ok = benchmarking.within_limits(dev)
    print(f"agreement geom-jax vs {name}: " + ("OK" if ok else "FAILED"))
    for key, value in dev.items():
        print(f"  {key:22s} {value:.2e} (limit {benchmarking.LIMITS[key]:.0e})")
    return ok


def main(argv):
    del argv
    import jax

    from geom_jax import metrics

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

    def jitted(observables):
        return jax.jit(
            lambda h: metrics.layer_geometry(
                h,
                observables=observables,
                range_max=FLAGS.range_max,
                max_k=FLAGS.max_k,
                layer_chunk=chunk,
                selection=FLAGS.selection,
            )
        )

    fn = jitted(FLAGS.observables)
    x = jax.device_put(hidden)
    start = time.perf_counter()
    geo = jax.block_until_ready(fn(x))
    print(f"layer_geometry compile + first run: {time.perf_counter() - start:.2f} s")
    jax_min, jax_med, jax_cpu = timed(lambda: jax.block_until_ready(fn(x)), FLAGS.repeats)
    print(
        f"layer_geometry ({FLAGS.selection} selection, observables={FLAGS.observables}): "
        f"min {jax_min:.3f} s, median {jax_med:.3f} s "
        f"over {FLAGS.repeats} runs (process CPU {jax_cpu:.3f} s); {load_avg()}"
    )
    if metrics.registry.resolve(FLAGS.observables).canonical != "paper":
        paper = jitted("paper")
        jax.block_until_ready(paper(x))
        walls = {"paper": [], FLAGS.observables: []}
        cpus = {"paper": [], FLAGS.observables: []}
        for _ in range(FLAGS.repeats):  # interleaved, so that load changes hit both
            for name, f in (("paper", paper), (FLAGS.observables, fn)):
                wall, _, cpu = timed(lambda f=f: jax.block_until_ready(f(x)), 1)
                walls[name].append(wall)
                cpus[name].append(cpu)
        t_paper, t_obs = min(walls["paper"]), min(walls[FLAGS.observables])
        c_paper, c_obs = min(cpus["paper"]), min(cpus[FLAGS.observables])
        print(
            f"observables={FLAGS.observables} vs paper (interleaved, min of {FLAGS.repeats}): "
            f"wall {t_obs:.3f} s vs {t_paper:.3f} s = {t_obs / t_paper:.2f}x, process CPU "
            f"{c_obs:.3f} s vs {c_paper:.3f} s = {c_obs / c_paper:.2f}x; {load_avg()}"
        )
    if FLAGS.stages:
        print("JAX stages, each jitted separately:")
        for name, sec in jax_stage_times(
            hidden, FLAGS.range_max, FLAGS.max_k, FLAGS.selection, FLAGS.repeats
        ).items():
            print(f"  {name:38s} {sec:7.3f} s")

    gram_s = gram_only(hidden, FLAGS.repeats)
    print(f"Gram matmuls alone (centred, HIGHEST, every layer): {gram_s:.3f} s")
    print(f"peak RSS so far: {peak_rss_gib():.2f} GiB")

    from benchmarks import benchmarking, paper

    ok, paper_s, peer_s = True, None, None
    args = dict(range_max=FLAGS.range_max, max_k=FLAGS.max_k)
    if FLAGS.peer:
        benchmarking.check_peer_env()
        peer_out, peer_s, peer_cpu = column(
            "peer (DADApy + scikit-learn, subprocess)",
            lambda: benchmarking.run_peer(hidden, **args),
            FLAGS.baseline_repeats,
        )
        ok &= report_agreement("peer", geo, peer_out)
    if FLAGS.paper:
        paper_out, paper_s, paper_cpu = column(
            "paper (the paper's code, operation for operation)",
            lambda: paper.paper_layer_geometry(hidden, **args),
            FLAGS.baseline_repeats,
        )
        ok &= report_agreement("paper", geo, paper_out)
    print(f"ratio to the Gram-only time: {jax_min / gram_s:.2f} (goal <= 2)")
    if paper_s:
        print(
            f"speed-up vs paper: {paper_s / jax_min:.1f}x ({paper_s:.2f} s / {jax_min:.3f} s; "
            f"process CPU {paper_cpu / jax_cpu:.1f}x)"
        )
    if peer_s:
        print(
            f"process CPU ratio vs peer (its idle OpenMP threads spin): {peer_cpu / jax_cpu:.1f}x "
            f"({peer_cpu:.2f} s / {jax_cpu:.3f} s)"
        )
        print(f"speed-up vs peer: {peer_s / jax_min:.1f}x ({peer_s:.2f} s / {jax_min:.3f} s)")
    else:
        print("peer skipped (--nopeer): no speed-up vs peer")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
