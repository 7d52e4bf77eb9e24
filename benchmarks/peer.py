"""The ``peer`` column: what a user computes today with DADApy 0.3.x and scikit-learn.

Runs in the ``make bench-env`` environment (DADApy pins jax 0.4.30, so it
cannot share geom-jax's), as a subprocess of the benchmark scripts
(``benchmarks.benchmarking.run_peer``); never imports geom_jax.

  .bench-venv/bin/python benchmarks/peer.py HIDDEN.npy OUT.npz --range_max=256 --max_k=32

HIDDEN is one prompt's [L, N, D] or prompts' [P, L, N, D]. Per layer:
``Data(x).compute_distances(maxk=range_max)``
on the distinct tokens (first occurrence kept, as the paper drops
duplicates), ``return_id_scaling_gride(range_max)``, ``compute_id_2NN``
(fraction 0.9), scikit-learn ``cosine_similarity``; for consecutive layers
``return_data_overlap(dist_indices=..., k=k)`` for k = 1..max_k (on all
tokens: a second kNN only when a layer has duplicates). OUT holds the
arrays (leading P for a [P, L, N, D] input), ``times`` (wall seconds per
stage summed over prompts, imports excluded) as JSON and ``cpu_s`` (process
CPU seconds of all stages, all threads).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

STAGES = ("distances", "cosine", "gride", "twonn", "overlap")


def peer_layer_geometry(hidden, range_max=256, max_k=32):
    from dadapy import Data  # noqa: PLC0415
    from sklearn.metrics.pairwise import cosine_similarity  # noqa: PLC0415

    times = dict.fromkeys(STAGES, 0.0)
    ids, errs, scales, tw, cm, cs, neighbours = [], [], [], [], [], [], []
    for x in np.asarray(hidden, np.float32):
        t = time.perf_counter()
        _, first = np.unique(x, axis=0, return_index=True)
        first = np.sort(first)
        data = Data(coordinates=x[first], maxk=min(range_max, len(first) - 1), verbose=False)
        data.compute_distances(maxk=min(range_max, len(first) - 1))
        if len(first) == len(x):
            neighbours.append(data)
        else:
            full = Data(coordinates=x, maxk=max_k, verbose=False)
            full.compute_distances(maxk=max_k)
            neighbours.append(full)
        times["distances"] += time.perf_counter() - t

        t = time.perf_counter()
        i, e, s = data.return_id_scaling_gride(range_max=range_max)
        ids.append(i)
        errs.append(e)
        scales.append(s)
        times["gride"] += time.perf_counter() - t

        t = time.perf_counter()
        tw.append(data.compute_id_2NN(algorithm="base", mu_fraction=0.9)[0])
        times["twonn"] += time.perf_counter() - t

        t = time.perf_counter()
        cos = cosine_similarity(x.astype(np.float32))
        cm.append(float(cos.mean()))
        cs.append(float(cos.std()))
        times["cosine"] += time.perf_counter() - t

    t = time.perf_counter()
    overlap = np.zeros((len(neighbours) - 1, max_k))
    for layer, (a, b) in enumerate(zip(neighbours[:-1], neighbours[1:])):
        for k in range(1, max_k + 1):
            overlap[layer, k - 1] = a.return_data_overlap(dist_indices=b.dist_indices, k=k)
    times["overlap"] += time.perf_counter() - t
    return dict(
        gride_ids=np.stack(ids),
        gride_errs=np.stack(errs),
        gride_scales=np.stack(scales),
        twonn=np.array(tw),
        overlap=overlap,
        cos_mean=np.array(cm),
        cos_std=np.array(cs),
    ), times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hidden")
    parser.add_argument("out")
    parser.add_argument("--range_max", type=int, default=256)
    parser.add_argument("--max_k", type=int, default=32)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    hidden = np.load(args.hidden)
    cpu = time.process_time()
    prompts = [
        peer_layer_geometry(h, args.range_max, args.max_k)
        for h in hidden.reshape((-1,) + hidden.shape[-3:])
    ]
    arrays = {k: np.stack([a[k] for a, _ in prompts]) for k in prompts[0][0]}
    if hidden.ndim == 3:
        arrays = {k: v[0] for k, v in arrays.items()}
    times = {k: sum(t[k] for _, t in prompts) for k in STAGES}
    cpu = time.process_time() - cpu
    np.savez(args.out, times=json.dumps(times), cpu_s=cpu, **arrays)


if __name__ == "__main__":
    main()
