"""Benchmark layer_geometry on dataset-scale clouds against FAISS + DADApy and DADApy, in one run.

One point per prompt at every layer (Cheng et al. ICLR 2025, Valeriani et
al. NeurIPS 2023, Doimo et al. 2024): L clouds of N points in D dims
(benchmarks/clouds.py documents the synthetic kinds). Three subprocesses, so
that each side's peak RSS is its own: geom-jax (benchmarks/geom_clouds.py:
``layer_geometry`` with the paper's observables, timed after a first,
compiling call, and the symmetric floor: the float32 products of the half-band
Gram tiles alone) and two peers (benchmarks/peer_clouds.py, in the ``make
bench-env`` environment): FAISS's exact ``IndexFlatL2`` search feeding DADApy
0.3.4's ``return_id_scaling_gride(range_max)`` and ``return_data_overlap(k)``,
and DADApy alone (``compute_distances(maxk=range_max)``). Prints each, the
agreement of geom-jax with both (GRIDE IDs relative, chi_k absolute), the load
average, and as the last line the ratios to DADApy, to the faster peer (steady
and counting compilation) and to the floor, with every peak RSS.

  python -m benchmarks.bench_clouds --points=32768 --layers=2 --dim=576
"""

import os
import sys
import tempfile

import numpy as np
from absl import app, flags

from benchmarks import benchmarking, clouds
from benchmarks.benchmarking import child, gib, load_avg

FLAGS = flags.FLAGS
flags.DEFINE_integer("points", 8192, "Points N per cloud (one per prompt).")
flags.DEFINE_integer("layers", 4, "Layers L (clouds of the same points).")
flags.DEFINE_integer("dim", 576, "Dimension D.")
flags.DEFINE_enum("cloud", "manifold", list(clouds.KINDS), "Synthetic cloud kind.")
flags.DEFINE_integer("latent_dim", 9, "Intrinsic dimension of the manifold cloud.")
flags.DEFINE_integer("range_max", 256, "GRIDE range_max (both sides).")
flags.DEFINE_integer("k", 32, "Neighbourhood size of the overlap between layers (both sides).")
flags.DEFINE_integer("repeats", 1, "Timed geom-jax runs after the first (compiling) call.")
flags.DEFINE_enum(
    "neighbour_path", "auto", ["auto", "dense", "blocked"], "layer_geometry's neighbour_path."
)
flags.DEFINE_integer("block_rows", None, "layer_geometry's block_rows (default: automatic).")
flags.DEFINE_bool("peer", True, "Run the peer (needs `make bench-env`).")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic clouds.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEOM_SCRIPT = os.path.join(ROOT, "benchmarks", "geom_clouds.py")
PEER_SCRIPT = os.path.join(ROOT, "benchmarks", "peer_clouds.py")

PEERS = {
    "faiss": "FAISS IndexFlatL2 + DADApy 0.3.4 (its GRIDE and overlap on FAISS's lists)",
    "dadapy": "DADApy 0.3.4 alone",
}

LIMITS = {"gride_ids (rel)": 1e-4, "overlap (max abs)": 1e-6}
"""The issue's agreement: float32 exact k-NN against DADApy's float64-accumulated one."""


def main(argv):
    del argv
    hidden = clouds.make(
        FLAGS.cloud, FLAGS.layers, FLAGS.points, FLAGS.dim, FLAGS.latent_dim, FLAGS.seed
    )
    print(
        f"clouds: {FLAGS.cloud} [L={FLAGS.layers}, N={FLAGS.points}, D={FLAGS.dim}]"
        + (f" (latent dimension {FLAGS.latent_dim})" if FLAGS.cloud == "manifold" else "")
        + f", range_max {FLAGS.range_max}, k {FLAGS.k}; {load_avg()}",
        flush=True,
    )
    common = [f"--range_max={FLAGS.range_max}", f"--k={FLAGS.k}"]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "hidden.npy")
        np.save(src, hidden)
        del hidden
        args = common + [f"--repeats={FLAGS.repeats}", f"--neighbour_path={FLAGS.neighbour_path}"]
        if FLAGS.block_rows:
            args.append(f"--block_rows={FLAGS.block_rows}")
        env = dict(os.environ, PYTHONPATH=ROOT)
        geo = child(sys.executable, GEOM_SCRIPT, src, os.path.join(tmp, "geo.npz"), args, env)
        print(
            f"geom-jax ({str(geo['path'])} path): first call (compilation + run) "
            f"{float(geo['first_s']):.2f} s; min of {FLAGS.repeats} run(s) "
            f"{float(geo['seconds']):.2f} s (process CPU {float(geo['cpu_s']):.2f} s over them); "
            f"peak RSS {gib(geo['peak_rss']):.2f} GiB; {load_avg()}",
            flush=True,
        )
        print(
            f"symmetric floor (the half-band Gram tiles' float32 products alone): "
            f"{float(geo['floor_s']):.2f} s",
            flush=True,
        )
        if not FLAGS.peer:
            return
        benchmarking.check_peer_env()
        peer_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "JAX_"))}
        peers = {}
        for knn in ("faiss", "dadapy"):
            out = os.path.join(tmp, f"peer_{knn}.npz")
            peers[knn] = child(
                benchmarking.PEER_PYTHON, PEER_SCRIPT, src, out, common + [f"--knn={knn}"], peer_env
            )
            p = peers[knn]
            print(
                f"{PEERS[knn]}: {float(p['seconds']):.2f} s (k-NN {float(p['knn_s']):.2f} s; "
                f"process CPU {float(p['cpu_s']):.2f} s); peak RSS {gib(p['peak_rss']):.2f} GiB; "
                f"{load_avg()}",
                flush=True,
            )
    for knn, peer in peers.items():
        if not _agreement(geo, peer, PEERS[knn]) and knn == "faiss":
            print(
                "  (FAISS orders by float32 |x|^2 + |y|^2 - 2 x.y with no exact refinement, so "
                "its lists swap neighbours whose distances float32 cannot order; DADApy's own "
                "lists are exact, and geom-jax's equal them)"
            )
    ids = np.asarray(geo["gride_ids"], np.float64)
    print(f"  GRIDE ids, layer 0: {np.array2string(ids[0], precision=3)}")
    chi = np.array2string(geo["overlap"], precision=4)
    print(f"  chi_{FLAGS.k} between consecutive layers: {chi}")
    steady, first = float(geo["seconds"]), float(geo["first_s"])
    fastest = min(peers, key=lambda k: float(peers[k]["seconds"]))
    best = float(peers[fastest]["seconds"])
    print(
        f"vs DADApy alone {float(peers['dadapy']['seconds']) / steady:.2f}x; vs the faster peer "
        f"({PEERS[fastest]}) {best / steady:.2f}x steady, {best / first:.2f}x with compilation; "
        f"geom-jax / symmetric floor {steady / float(geo['floor_s']):.2f}; peak RSS geom-jax "
        f"{gib(geo['peak_rss']):.2f} GiB, FAISS + DADApy {gib(peers['faiss']['peak_rss']):.2f} "
        f"GiB, DADApy {gib(peers['dadapy']['peak_rss']):.2f} GiB"
    )


def _agreement(geo, peer, name):
    ids, ref = np.asarray(geo["gride_ids"], np.float64), np.asarray(peer["gride_ids"], np.float64)
    dev = {"gride_ids (rel)": float(np.max(np.abs(ids - ref) / np.abs(ref)))}
    if np.size(peer["overlap"]):  # one layer: no pair to overlap
        dev["overlap (max abs)"] = float(np.max(np.abs(geo["overlap"] - peer["overlap"])))
    errs = np.abs(geo["gride_errs"] - peer["gride_errs"]) / np.abs(peer["gride_errs"])
    scales = np.abs(geo["gride_scales"] - peer["gride_scales"]) / np.abs(peer["gride_scales"])
    ok = all(dev[k] <= LIMITS[k] for k in dev)
    print(
        f"agreement with {name}: "
        + ("OK" if ok else "FAILED")
        + " ("
        + ", ".join(f"{k} {v:.1e} (limit {LIMITS[k]:.0e})" for k, v in dev.items())
        + f"; gride_errs {float(np.max(errs)):.1e} rel, "
        + f"gride_scales {float(np.max(scales)):.1e} rel)"
    )
    return ok


if __name__ == "__main__":
    app.run(main)
