"""Benchmark density + density-peak clusters and the ID battery against DADApy and
scikit-dimension, in one run.

Per layer of L clouds of N points in D dims (benchmarks/clouds.py's synthetic kinds),
two parts, each side in its own subprocess so that its peak RSS is its own:

* density: geom-jax ``layer_geometry(observables="density,adp")`` (TwoNN, k-NN and PAk
  log densities, ADP clusters at Z = 1.65) against DADApy 0.3.4's
  ``compute_distances(maxk=100)``, ``compute_id_2NN``, ``compute_density_kNN(16)``,
  ``compute_density_PAk``, ``compute_clustering_ADP`` (benchmarks/peer_density.py);
* battery: ``layer_geometry(observables="id_battery")`` against scikit-dimension 0.5's
  MADA, MOM, CorrInt, ESS, FisherS and lPCA and DADApy's binomial ID, each with its
  defaults (geom-jax's battery also computes PHD, which neither peer has: its time is
  included on geom-jax's side).

geom-jax is timed after a first, compiling call (``--repeats``), and with it. Prints
each side, their agreement (log densities, cluster counts and the adjusted Rand index
between the two labelings, every estimator relative), the load average, and as the last
line the speed-ups of both parts at every N with every peak RSS.

  python -m benchmarks.bench_density --points=8192,32768 --layers=1 --dim=576
"""

import os
import sys
import tempfile

import numpy as np
from absl import app, flags

from benchmarks import benchmarking, clouds
from benchmarks.benchmarking import child, gib, load_avg

FLAGS = flags.FLAGS
flags.DEFINE_list("points", ["8192", "32768"], "Points N per cloud (one run per value).")
flags.DEFINE_integer("layers", 1, "Layers L (clouds of the same points).")
flags.DEFINE_integer("dim", 576, "Dimension D.")
flags.DEFINE_enum("cloud", "manifold", list(clouds.KINDS), "Synthetic cloud kind.")
flags.DEFINE_integer("latent_dim", 9, "Intrinsic dimension of the manifold cloud.")
flags.DEFINE_integer("repeats", 1, "Timed geom-jax runs after the first (compiling) call.")
flags.DEFINE_list("parts", ["density", "battery"], "Parts to time: density, battery.")
flags.DEFINE_bool("peer", True, "Run the peers (needs `make bench-env`).")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic clouds.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEOM_SCRIPT = os.path.join(ROOT, "benchmarks", "geom_density.py")
PEER_SCRIPT = os.path.join(ROOT, "benchmarks", "peer_density.py")
PEERS = {
    "density": "DADApy 0.3.4 (k-NN, TwoNN, k-NN and PAk densities, ADP)",
    "battery": "scikit-dimension 0.5 (MADA, MOM, CorrInt, ESS, FisherS, lPCA) + DADApy binomial",
}
BATTERY = {
    "mada": "mada_id",
    "mom": "mom_id",
    "corrint": "corrint_id",
    "ess": "ess_id",
    "fishers": "fishers_id",
    "lpca": "lpca_id",
    "binomial": "binomial_id",
}


def adjusted_rand(a, b):
    """scikit-learn's adjusted Rand index of two labelings (NumPy, pair counts)."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), np.int64)
    np.add.at(table, (ai, bi), 1)
    pairs = lambda c: float(np.sum(c * (c - 1) // 2))
    both, rows, cols, total = (
        pairs(table),
        pairs(table.sum(1)),
        pairs(table.sum(0)),
        pairs(np.asarray([len(a)])),
    )
    expected = rows * cols / total
    top = 0.5 * (rows + cols)
    return 1.0 if top == expected else (both - expected) / (top - expected)


def _density_agreement(geo, peer):
    finite = np.isfinite(peer["pak_log_density"]) & np.isfinite(geo["pak_log_density"])
    knn = np.max(np.abs(geo["knn_log_density"] - peer["knn_log_density"]))
    pak = np.abs(geo["pak_log_density"] - peer["pak_log_density"])[finite]
    ari = [adjusted_rand(g, p) for g, p in zip(geo["adp_labels"], peer["adp_labels"])]
    twonn = np.max(np.abs(geo["density_id"] - peer["twonn"]) / peer["twonn"])
    return (
        f"TwoNN {twonn:.1e} rel; k-NN log density max |diff| {knn:.1e}; PAk log density "
        f"|diff| median {np.median(pak):.1e}, max {np.max(pak):.1e}; clusters geom-jax "
        f"{np.asarray(geo['adp_clusters']).tolist()}, DADApy "
        f"{np.asarray(peer['adp_clusters']).tolist()}; ARI between the labelings "
        f"{np.round(ari, 6).tolist()}"
    )


def _battery_agreement(geo, peer):
    parts = []
    for name, field in BATTERY.items():
        if name in peer and field in geo:
            rel = np.max(np.abs(geo[field] - peer[name]) / np.abs(peer[name]))
            parts.append(f"{name} {float(np.ravel(geo[field])[0]):.3f} ({rel:.1e} rel)")
    if "phd_id" in geo:
        parts.append(f"phd {float(np.ravel(geo['phd_id'])[0]):.3f} (no peer)")
    return "; ".join(parts)


def _one(n, part, tmp):
    hidden = clouds.make(FLAGS.cloud, FLAGS.layers, n, FLAGS.dim, FLAGS.latent_dim, FLAGS.seed)
    src = os.path.join(tmp, f"hidden_{n}.npy")
    np.save(src, hidden)
    del hidden
    env = dict(os.environ, PYTHONPATH=ROOT)
    args = [f"--part={part}", f"--repeats={FLAGS.repeats}"]
    geo = child(sys.executable, GEOM_SCRIPT, src, os.path.join(tmp, "geo.npz"), args, env)
    print(
        f"N={n} {part}: geom-jax first call (compilation + run) {float(geo['first_s']):.2f} s; "
        f"min of {FLAGS.repeats} run(s) {float(geo['seconds']):.2f} s; peak RSS "
        f"{gib(geo['peak_rss']):.2f} GiB; {load_avg()}",
        flush=True,
    )
    if not FLAGS.peer:
        return None
    peer_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "JAX_"))}
    peer = child(
        benchmarking.PEER_PYTHON,
        PEER_SCRIPT,
        src,
        os.path.join(tmp, "peer.npz"),
        [f"--part={part}"],
        peer_env,
    )
    each = ", ".join(
        f"{k.split('/')[1]} {float(v):.1f} s" for k, v in peer.items() if k.startswith("part_s/")
    )
    print(
        f"N={n} {part}: {PEERS[part]} {float(peer['seconds']):.2f} s"
        + (f" ({each})" if each else "")
        + f"; peak RSS {gib(peer['peak_rss']):.2f} GiB; {load_avg()}",
        flush=True,
    )
    agree = _density_agreement if part == "density" else _battery_agreement
    print(f"  agreement: {agree(geo, peer)}", flush=True)
    return (
        f"{part} at N={n}: {float(peer['seconds']) / float(geo['seconds']):.2f}x steady, "
        f"{float(peer['seconds']) / float(geo['first_s']):.2f}x with compilation, peak RSS "
        f"geom-jax {gib(geo['peak_rss']):.2f} GiB, peer {gib(peer['peak_rss']):.2f} GiB"
    )


def main(argv):
    del argv
    if FLAGS.peer:
        benchmarking.check_peer_env()
    print(
        f"clouds: {FLAGS.cloud} [L={FLAGS.layers}, D={FLAGS.dim}]"
        + (f" (latent dimension {FLAGS.latent_dim})" if FLAGS.cloud == "manifold" else "")
        + f"; {load_avg()}",
        flush=True,
    )
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(p) for p in FLAGS.points]:
            for part in FLAGS.parts:
                line = _one(n, part, tmp)
                if line:
                    summary.append(line)
    if summary:
        print("speed-up over the peer: " + "; ".join(summary))


if __name__ == "__main__":
    app.run(main)
