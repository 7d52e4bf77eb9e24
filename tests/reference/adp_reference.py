"""Write tests/fixtures/adp_reference.npz: DADApy's Advanced Density Peaks clustering and
scikit-learn's ARI / AMI for tests/test_adp.py.

Runs in the ``make bench-env`` environment (DADApy 0.3.4, scikit-learn, SciPy), never
imports geom_jax:

  .bench-venv/bin/python tests/reference/adp_reference.py tests/fixtures/adp_reference.npz

Every value is float64, computed from the float32 points (cast to float64 first). Keys
``CASE/FIELD``; the cases:

* ``mixture`` [600, 12]: six Gaussian clusters (populations 150, 120, 100, 100, 80, 50,
  isotropic scales 0.6 to 1.5, centres drawn from N(0, 9 I));
* ``curved`` [500, 20]: a Swiss roll (t cos t, h, t sin t), t from a mixture of three
  Gaussians along the roll, h uniform in [0, 8], rotated into 20 dimensions, plus
  isotropic noise 0.05 (a curved 2-manifold with three density bumps);
* ``ties`` [400, 8]: 400 distinct points of the integer lattice Z^4 (three rounded
  Gaussian clusters), mapped by a fixed integer matrix with entries in {-1, 0, 1} to 8
  dimensions: integer squared distances, exact in float32, with large groups of equal
  distances (and equal densities).

``CASE/truth`` [N] (int32) is the generating component of each point.

``curved_k6``: the ``curved`` points with DADApy given only the first 6 neighbours of
each point (maxk = 6, so k* = 5 everywhere), ``Z=1.65`` without halo: many putative
centres, two of them dropped with no assigned point among their 6 neighbours, which
sends DADApy's assignment to its lookup table of dropped centres; for one of the two
that lookup lands on a point not yet assigned, and DADApy's label there is whatever
``np.empty`` held (the point is in no ``cluster_indices``: ``unassigned``). Same fields as
the cases below, without ``ari`` and ``ami``; its lists are the first 6 columns after
the first of ``curved/dist_indices``.

Neighbour lists: float64 distances (``cdist``), each row sorted by (distance, index), the
point itself first: ``CASE/dist_indices`` [N, 101] (int16), DADApy's ``dist_indices``
with maxk = 100 (``min(100, N - 1)``, its default). DADApy is given these lists
(``Data(distances=(dist, dist_indices))``) so that distance ties go to the lower index;
on ``mixture`` and ``curved`` (no ties) the generator checks that ``Data(x)``'s own
lists are the same.

DADApy's defaults then give (``compute_density_PAk()``: the TwoNN intrinsic dimension of
``compute_id_2NN()``, k* from ``compute_kstar(alpha=1e-6)``):

* ``intrinsic_dim`` (scalar); ``log_den``, ``log_den_err`` [N] float64; ``kstar`` [N]
  (int32);

and for each ``RUN`` in ``z1.65``, ``z1.65_halo``, ``z3.0``, ``z3.0_halo``
(``compute_clustering_ADP(Z=..., halo=...)``), under ``CASE/RUN/FIELD``:

* ``labels`` [N] (int32): ``cluster_assignment`` (-1: halo);
* ``centres`` [C] (int32): ``cluster_centers``; ``populations`` [C] (int32): the length
  of each of ``cluster_indices`` (halo points included);
* ``log_den_bord``, ``log_den_bord_err`` [C, C] float64, ``bord_indices`` [C, C]
  (int32), as DADApy stores them;
* ``unassigned`` (int32): the points in none of ``cluster_indices`` (their label is
  uninitialised memory); empty except on ``curved_k6``;
* ``ari``, ``ami`` (not for ``curved_k6``): ``adjusted_rand_score(truth, labels)`` and
  ``adjusted_mutual_info_score(truth, labels)`` (average_method="arithmetic") on the
  points whose label is not -1.

ARI / AMI on their own, ``scores/NAME/a``, ``scores/NAME/b`` [n] (int32) and
``scores/NAME/ari``, ``scores/NAME/ami`` (``*_score(b, a)``, b the truth): ``random``
(600 points, 7 against 5 random classes), ``identical`` (a relabelled copy), ``one_pred``
(a single predicted class against 4 classes), ``singletons`` (50 points, every
predicted class of one point), ``small`` (12 points, 3 against 2 classes), ``large``
(3000 points, 40 against 30 classes, dependent), ``all_singletons`` (20 points, each
its own class in both: ARI's special case, 1.0).

``versions`` [3] (str): dadapy, sklearn, numpy.
"""

import argparse
import warnings
from importlib.metadata import version

import dadapy
import numpy as np
import sklearn
from scipy.spatial.distance import cdist
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

MAXK = 100
RUNS = ((1.65, False), (1.65, True), (3.0, False), (3.0, True))


def run_name(z, halo):
    return f"z{z}" + ("_halo" if halo else "")


def mixture(rng):
    d = 12
    sizes = (150, 120, 100, 100, 80, 50)
    scales = (1.0, 0.6, 1.5, 0.8, 1.2, 0.7)
    xs, truth = [], []
    for c, (n, s) in enumerate(zip(sizes, scales)):
        centre = 3.0 * rng.standard_normal(d)
        xs.append(centre + s * rng.standard_normal((n, d)))
        truth.append(np.full(n, c))
    x, truth = np.concatenate(xs), np.concatenate(truth)
    order = rng.permutation(len(x))
    return x[order], truth[order]


def curved(rng):
    n, d = 500, 20
    means, sds = np.array([5.5, 9.0, 12.5]), np.array([0.7, 0.8, 0.6])
    comp = rng.choice(3, n, p=[0.4, 0.35, 0.25])
    t = means[comp] + sds[comp] * rng.standard_normal(n)
    h = rng.uniform(0.0, 8.0, n)
    roll = np.stack([t * np.cos(t), h, t * np.sin(t)], axis=1)
    basis, _ = np.linalg.qr(rng.standard_normal((d, 3)))
    return roll @ basis.T + 0.05 * rng.standard_normal((n, d)), comp


def ties(rng):
    n = 400
    centres = np.array([[0, 0, 0, 0], [16, 0, 0, 0], [0, 14, 7, 0]])
    comp = rng.choice(3, 3 * n)
    pts = np.rint(centres[comp] + 2.5 * rng.standard_normal((3 * n, 4))).astype(np.int64)
    _, first = np.unique(pts, axis=0, return_index=True)
    keep = np.sort(first)[:n]
    assert len(keep) == n
    m = rng.integers(-1, 2, (4, 8))
    assert np.linalg.matrix_rank(m) == 4
    return (pts[keep] @ m).astype(np.float64), comp[keep]


def lists(x):
    """float64 distances [N, MAXK + 1] and indices, the point itself first, the others by
    (distance, index)."""
    d = cdist(x, x)
    key = d.copy()
    np.fill_diagonal(key, -1.0)
    idx = np.argsort(key, axis=1, kind="stable")[:, : MAXK + 1]
    return np.take_along_axis(d, idx, axis=1), idx


def density(x, name, maxk=MAXK):
    """DADApy's Data on the lists above (the first maxk), its TwoNN dimension and PAk
    densities."""
    dist, idx = lists(x)
    dist, idx = dist[:, : maxk + 1].copy(), idx[:, : maxk + 1].copy()
    data = dadapy.Data(distances=(dist, idx), maxk=maxk, verbose=False)
    data.compute_id_2NN()
    data.compute_density_PAk()
    assert np.array_equal(data.dist_indices, idx)
    if maxk == MAXK:
        own = dadapy.Data(x, maxk=MAXK, verbose=False)
        own.compute_distances()
        differ = int(np.sum(np.any(own.dist_indices != idx, axis=1)))
        print(f"{name}: DADApy's own lists differ from (distance, index) order in {differ} rows")
        assert name == "ties" or differ == 0, f"{name}: DADApy's own lists differ"
    return data, idx


def scores(truth, labels):
    keep = labels != -1
    t, p = truth[keep], labels[keep]
    return adjusted_rand_score(t, p), adjusted_mutual_info_score(t, p)


def clustering(data, truth, z, halo):
    labels = np.asarray(data.compute_clustering_ADP(Z=z, halo=halo), np.int32)
    ari, ami = scores(truth, labels)
    return {
        "labels": labels,
        "centres": np.asarray(data.cluster_centers, np.int32),
        "populations": np.array([len(c) for c in data.cluster_indices], np.int32),
        "log_den_bord": np.asarray(data.log_den_bord, np.float64),
        "log_den_bord_err": np.asarray(data.log_den_bord_err, np.float64),
        "bord_indices": np.asarray(data.bord_indices, np.int32),
        "unassigned": np.setdiff1d(
            np.arange(len(labels)), np.concatenate(data.cluster_indices)
        ).astype(np.int32),
        "ari": ari,
        "ami": ami,
    }


def score_cases(rng):
    out = {}
    a = rng.integers(0, 7, 600)
    out["random"] = (a, rng.integers(0, 5, 600))
    b = rng.integers(0, 4, 200)
    out["identical"] = ((b * 3 + 1) % 11, b)
    out["one_pred"] = (np.zeros(200, np.int64), b)
    out["singletons"] = (np.arange(50), rng.integers(0, 3, 50))
    out["small"] = (rng.integers(0, 3, 12), rng.integers(0, 2, 12))
    t = rng.integers(0, 30, 3000)
    p = np.where(rng.random(3000) < 0.6, t, rng.integers(0, 40, 3000))
    out["large"] = (p, t)
    perm = rng.permutation(20)
    out["all_singletons"] = (perm, np.arange(20))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    out = {}
    makers = {"mixture": mixture, "curved": curved, "ties": ties}
    for seed, (name, make) in enumerate(makers.items()):
        x, truth = make(np.random.default_rng(10 + seed))
        x32 = x.astype(np.float32)
        out[f"{name}/x"] = x32
        out[f"{name}/truth"] = truth.astype(np.int32)
        cases = [(name, MAXK, RUNS)] + ([("curved_k6", 6, RUNS[:1])] if name == "curved" else [])
        for prefix, maxk, runs in cases:
            data, idx = density(x32.astype(np.float64), name, maxk)
            if maxk == MAXK:
                out[f"{name}/dist_indices"] = idx.astype(np.int16)
            out[f"{prefix}/intrinsic_dim"] = float(data.intrinsic_dim)
            out[f"{prefix}/log_den"] = np.asarray(data.log_den, np.float64)
            out[f"{prefix}/log_den_err"] = np.asarray(data.log_den_err, np.float64)
            out[f"{prefix}/kstar"] = np.asarray(data.kstar, np.int32)
            for z, halo in runs:
                run = f"{prefix}/{run_name(z, halo)}"
                for key, value in clustering(data, truth, z, halo).items():
                    if maxk == MAXK or key not in ("ari", "ami"):
                        out[f"{run}/{key}"] = value
                ari, ami = out.get(f"{run}/ari", np.nan), out.get(f"{run}/ami", np.nan)
                print(
                    f"{run}: {len(out[run + '/centres'])} clusters, populations "
                    f"{out[run + '/populations'].tolist()}, halo "
                    f"{np.sum(out[run + '/labels'] == -1)}, ARI {ari:.4f}, AMI {ami:.4f}"
                )
            g = data.log_den - data.log_den_err
            print(
                f"{prefix}: kstar {data.kstar.min()}..{data.kstar.max()}, "
                f"ID {data.intrinsic_dim:.3f}, equal g values {len(g) - len(np.unique(g))}"
            )
    for name, (a, b) in score_cases(np.random.default_rng(20)).items():
        out[f"scores/{name}/a"] = a.astype(np.int32)
        out[f"scores/{name}/b"] = b.astype(np.int32)
        out[f"scores/{name}/ari"] = adjusted_rand_score(b, a)
        out[f"scores/{name}/ami"] = adjusted_mutual_info_score(b, a)
    out["versions"] = np.array(
        [f"dadapy {version('dadapy')}", f"sklearn {sklearn.__version__}", f"numpy {np.__version__}"]
    )
    np.savez_compressed(args.out, **out)


if __name__ == "__main__":
    main()
