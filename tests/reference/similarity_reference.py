"""Write tests/fixtures/similarity_reference.npz: DADApy 0.3.4 values for the tests.

Runs in the ``make bench-env`` environment (DADApy), never imports geom_jax:

  .bench-venv/bin/python tests/reference/similarity_reference.py \
      tests/fixtures/clouds_reference.npz tests/fixtures/similarity_reference.npz

Keys ``CASE/FIELD``:

* information imbalance between two representations of different dimensions,
  ``MetricComparisons(np.hstack([x, y]), maxk=N - 1).return_inf_imb_two_selected_coords(
  range(Dx), range(Dx, Dx + Dy))`` (full ranks, so exact), in float64 from the
  float32 points, given only the valid points:
  - ``curved``: x [400, 24] and y [400, 7], two nonlinear maps of one 4-d latent
    cloud (y sees 3 of its coordinates) plus noise; ``x``, ``y``, ``info_imbalance`` [2];
  - ``curved_masked``: the same points, 57 of them invalid: ``mask`` [400] and
    ``info_imbalance`` [2] of the 343 valid ones (the test fills the invalid rows
    with garbage);
  - ``smollm2``: the first 1,000 distinct rows of clouds_reference's
    ``smollm2_last_token`` layer 2 (576 dims) against the same rows of layer 0
    projected on 40 seeded Gaussian directions: ``rows`` [1000], ``y`` [1000, 40]
    (float32), ``info_imbalance`` [2];
* ``smollm2_distinct``: ``return_label_overlap`` on the distinct rows of each
  layer of ``smollm2_last_token`` (first occurrence kept, the mask a test gives):
  ``mask`` [3, 2000], ``label_overlap_k30`` [3], ``label_overlap_cf03`` [3]
  (k = 30; class_fraction = 0.3).
"""

import argparse
import warnings

import numpy as np
from dadapy import MetricComparisons


def inf_imb(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, dx = x.shape
    mc = MetricComparisons(coordinates=np.hstack([x, y]), maxk=n - 1, verbose=False)
    cols = list(range(dx)), list(range(dx, dx + y.shape[1]))
    return np.array(mc.return_inf_imb_two_selected_coords(*cols, k=1))


def label_overlaps(x, labels):
    mc = MetricComparisons(coordinates=np.asarray(x, np.float64), maxk=100, verbose=False)
    return mc.return_label_overlap(labels, k=30), mc.return_label_overlap(
        labels, class_fraction=0.3
    )


def first_occurrence(x):
    """Bool [N]: the row is the first occurrence of its coordinates."""
    _, first = np.unique(x, axis=0, return_index=True)
    keep = np.zeros(len(x), bool)
    keep[first] = True
    return keep


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clouds")
    parser.add_argument("out")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    out = {}

    rng = np.random.default_rng(2205)
    z = rng.standard_normal((400, 4))
    x = np.tanh(z @ rng.standard_normal((4, 24))) + 0.05 * rng.standard_normal((400, 24))
    y = np.sin(z[:, :3] @ rng.standard_normal((3, 7))) + 0.05 * rng.standard_normal((400, 7))
    x, y = x.astype(np.float32), y.astype(np.float32)
    out["curved/x"], out["curved/y"] = x, y
    out["curved/info_imbalance"] = inf_imb(x, y)
    mask = np.ones(400, bool)
    mask[rng.choice(400, 57, replace=False)] = False
    out["curved_masked/mask"] = mask
    out["curved_masked/info_imbalance"] = inf_imb(x[mask], y[mask])

    clouds = np.load(args.clouds)
    pts = clouds["smollm2_last_token/points"]
    rows = np.flatnonzero(first_occurrence(pts[2]) & first_occurrence(pts[0]))[:1000]
    proj = rng.standard_normal((pts.shape[-1], 40)).astype(np.float32)
    out["smollm2/rows"], out["smollm2/y"] = rows, pts[0, rows] @ proj
    out["smollm2/info_imbalance"] = inf_imb(pts[2, rows], out["smollm2/y"])

    labels = clouds["smollm2_last_token/labels"]
    masks, k30, cf03 = [], [], []
    for layer in pts:
        keep = first_occurrence(layer)
        a, b = label_overlaps(layer[keep], labels[keep])
        masks.append(keep)
        k30.append(a)
        cf03.append(b)
    out["smollm2_distinct/mask"] = np.stack(masks)
    out["smollm2_distinct/label_overlap_k30"] = np.array(k30)
    out["smollm2_distinct/label_overlap_cf03"] = np.array(cf03)
    np.savez_compressed(args.out, **out)


if __name__ == "__main__":
    main()
