"""Regenerate the reference values of the three shared fixtures from their stored points.

``metrics_reference.npz``, ``observables_reference.npz`` and ``clouds_reference.npz``
(tests/fixtures, copies of /work/shared/fixtures, whose README defines every field) keep
their input clouds (``CASE/points`` and, where present, ``CASE/labels`` and
``CASE/input_ids``); every other field is recomputed here from those points by the
independent peers: DADApy 0.3.4, scikit-learn, scikit-dimension 0.5.0, networkx 3 and
NumPy / SciPy in float64. Runs in the ``make bench-env`` environment from the repository
root and never imports geom_jax (DADApy pins an old jax):

  .bench-venv/bin/python tests/reference/shared_fixtures.py FIXTURE.npz OUT.npz [--check]

OUT gets the same keys in the same order: the inputs copied, the values recomputed.
With ``--check`` every recomputed field is compared with FIXTURE's: the maximum absolute
and relative deviation per key is printed, and the exit status is 1 when one exceeds its
limit (``LIMITS``). What a case holds decides which definitions apply: ``twonn_base``
marks a case of metrics_reference (the observables of Viswanathan, Gardinazzi, Panerai,
Cazzaniga & Biagetti 2025, "The Geometry of Tokens in Internal Representations of Large
Language Models"), ``mle`` one of observables_reference, ``twonn`` one of
clouds_reference (the dataset-scale clouds of Cheng et al., ICLR 2025, arXiv 2405.15471,
and Doimo et al. 2024, arXiv 2409.03662).

Duplicates: the ID estimators see the distinct rows of a layer, the first occurrence of
each kept in index order; everything else sees all N points.
"""

import argparse
import contextlib
import io
import sys
import warnings

import numpy as np
from scipy.spatial.distance import cdist

INPUTS = ("points", "labels", "input_ids")

LIMITS = {
    "gride_ids": ("rel", 1e-7),
    "gride_errs": ("rel", 1e-7),
    "gride_scales": ("rel", 1e-12),
    "twonn_base": ("rel", 1e-7),
    "twonn_ml": ("rel", 1e-12),
    "twonn": ("rel", 1e-7),
    "cos_mean": ("abs", 1e-12),
    "cos_std": ("abs", 1e-12),
    "overlap": ("abs", 1e-12),
    "mle": ("rel", 1e-10),
    "mle_pw": ("rel", 1e-10),
    "tle": ("rel", 1e-9),
    "tle_pw": ("rel", 1e-9),
    "participation_ratio": ("rel", 1e-10),
    "matrix_entropy_1": ("rel", 1e-10),
    "matrix_entropy_2": ("rel", 1e-10),
    "reciprocity": ("abs", 1e-12),
    "nn_similarity": ("abs", 1e-10),
    "nn_similarity_mean": ("abs", 1e-10),
    "curvature": ("abs", 1e-10),
    "info_imbalance": ("abs", 1e-12),
    "overlap_k30": ("abs", 1e-12),
    "label_overlap_k30": ("abs", 1e-12),
    "label_overlap_cf03": ("abs", 1e-12),
}
"""Per field: ("rel" | "abs", limit). GRIDE's bisection stops at a 1e-7 bracket in d
(DADApy's ``eps``) and TwoNN's slope is a ``scipy.optimize.curve_fit``, so those two get
1e-7 relative (GRIDE's scales are plain means: 1e-12). Counts (overlaps, ranks,
reciprocity) must be exact: 1e-12 absolute is far below one count (1 / (k N)). Every
other field is a closed float64 formula, reproducible to rounding: 1e-10, and 1e-9 for
TLE, whose reflections subtract nearly equal squares of scikit-learn's distances."""


def versions():
    """The installed versions of the peers, as their distributions name them."""
    from importlib.metadata import version

    names = ("dadapy", "scikit-learn", "scikit-dimension", "networkx", "numpy", "scipy")
    return {name: version(name) for name in names}


# ---------------------------------------------------------------- shared helpers


def first_occurrence(x):
    """Indices, ascending, of the first occurrence of every distinct row of x."""
    _, first = np.unique(x, axis=0, return_index=True)
    return np.sort(first)


def distance_matrix(x):
    """Euclidean distances in float64, scipy ``cdist``."""
    x = np.asarray(x, np.float64)
    return cdist(x, x)


def neighbour_lists(d, k):
    """The k nearest neighbours of every row of the distance matrix d, the point itself
    excluded, ties to the lower index (a stable sort)."""
    d = d.copy()
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def cosine_matrix(x):
    """C[i, j] = x_i . x_j / (|x_i| |x_j|) in float64."""
    x = np.asarray(x, np.float64)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return u @ u.T


def quiet(fn, *args, **kwargs):
    """Call fn with its prints (DADApy's notices) swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


# ---------------------------------------------------------------- metrics_reference


def gride_on_distances(d, range_max=256):
    """(ids, errs, scales) [S]: DADApy ``Data(distances=D, maxk=N-1)
    .return_id_scaling_gride(range_max)`` on the full float64 distance matrix of the
    distinct points (Denti et al. 2022, Sci. Rep. 12, 16854, "The generalized ratios
    intrinsic dimension estimator"). n1 = 2^s, n2 = 2 n1; the likelihood is maximised by
    bisection on [0.001, 1000] to 1e-7 after DADApy drops ratios above
    median + 20 (q95 - median); errs = Fisher information^-1/2 on all ratios; scales =
    mean (r_n1 + r_n2) / 2."""
    from dadapy import Data

    data = Data(distances=d, maxk=len(d) - 1, verbose=False)
    return data.return_id_scaling_gride(range_max=range_max)


def twonn_on_distances(d, mu_fraction):
    """TwoNN (Facco et al. 2017, Sci. Rep. 7, 12140): DADApy ``compute_id_2NN
    (mu_fraction)`` on the distance matrix; 0.9 the linear fit through the origin of
    -log(1 - i/N) against the sorted log mu, 1.0 the maximum likelihood
    (N - 1) / sum log mu."""
    from dadapy import Data

    data = Data(distances=d, maxk=len(d) - 1, verbose=False)
    return float(quiet(data.compute_id_2NN, mu_fraction=mu_fraction)[0])


def neighbourhood_overlap(d_a, d_b, max_k=32):
    """[max_k]: element k (1 <= k < max_k) the mean over points of
    |kNN_a(i) & kNN_b(i)| / k (Viswanathan et al. 2025, after Doimo et al. 2020), the point
    itself excluded, ties to the lower index; element 0 is 0."""
    lists_a, lists_b = neighbour_lists(d_a, max_k), neighbour_lists(d_b, max_k)
    out = np.zeros(max_k)
    for k in range(1, max_k):
        shared = [len(set(a[:k]) & set(b[:k])) for a, b in zip(lists_a, lists_b)]
        out[k] = np.mean(shared) / k
    return out


def metrics_case(case):
    """The fields of a metrics_reference case (its README's first table)."""
    points = case["points"]
    ids, errs, scales, base, ml, cmean, cstd, dists = [], [], [], [], [], [], [], []
    for x in points:
        d = distance_matrix(x[first_occurrence(x)])
        i, e, s = gride_on_distances(d)
        ids.append(i)
        errs.append(e)
        scales.append(s)
        base.append(twonn_on_distances(d, 0.9))
        ml.append(twonn_on_distances(d, 1.0))
        c = cosine_matrix(x)
        cmean.append(c.mean())
        cstd.append(c.std())
        dists.append(distance_matrix(x))
    out = {
        "gride_ids": np.stack(ids),
        "gride_errs": np.stack(errs),
        "gride_scales": np.stack(scales),
        "twonn_base": np.array(base),
        "twonn_ml": np.array(ml),
        "cos_mean": np.array(cmean),
        "cos_std": np.array(cstd),
    }
    if "overlap" in case:
        out["overlap"] = np.stack(
            [neighbourhood_overlap(a, b) for a, b in zip(dists[:-1], dists[1:])]
        )
    return out


# ---------------------------------------------------------------- observables_reference


def mle_skdim(x, k=20):
    """(global, pointwise) Levina & Bickel 2005 (NeurIPS, eq. 8) MLE: scikit-dimension
    ``MLE().fit(X, n_neighbors=k)``: ``dimension_``, ``dimension_pw_``; pointwise
    m_i = (k - 1) / sum_{j<k} log(T_k / T_j), global 1 / mean(1 / m_i)."""
    from skdim.id import MLE

    est = MLE().fit(np.asarray(x, np.float64), n_neighbors=k)
    return float(est.dimension_), np.asarray(est.dimension_pw_, np.float64)


def tle_skdim(x, k=20):
    """(global, pointwise) tight-locality estimator (Amsaleg et al. 2019, SDM, "Intrinsic
    dimensionality estimation within tight localities"): scikit-dimension
    ``TLE().fit(X, n_neighbors=k)`` (epsilon 1e-4), the global value the mean of the
    pointwise ones."""
    from skdim.id import TLE

    est = TLE().fit(np.asarray(x, np.float64), n_neighbors=k)
    return float(est.dimension_), np.asarray(est.dimension_pw_, np.float64)


def participation_ratio(x):
    """(sum lambda)^2 / sum lambda^2, lambda the eigenvalues of the covariance of the
    points centred at their mean (Gao et al. 2017, arXiv 1710.08926, eq. 2; Recanatesi et
    al. 2022)."""
    lam = np.linalg.eigvalsh(np.cov(np.asarray(x, np.float64).T, bias=True))
    return float(lam.sum() ** 2 / np.sum(lam**2))


def matrix_entropies(x):
    """(alpha = 1, alpha = 2) matrix-based Renyi entropy (Giraldo et al. 2014, IEEE Trans.
    Inf. Theory 61(1), eq. 9; Skean et al. 2025, arXiv 2502.02013) of rho = C / N, C the
    cosine-similarity matrix: -sum lambda log lambda and -log sum lambda^2, lambda its
    eigenvalues (negative rounding clipped to 0)."""
    lam = np.clip(np.linalg.eigvalsh(cosine_matrix(x) / len(x)), 0.0, None)
    pos = lam[lam > 0]
    return float(-np.sum(pos * np.log(pos))), float(-np.log(np.sum(lam**2)))


def reciprocity(d, max_k=32):
    """[max_k]: element k-1 networkx ``overall_reciprocity`` of the digraph i -> j for
    the k nearest neighbours j of i (self excluded, ties to the lower index)."""
    import networkx as nx

    lists = neighbour_lists(d, max_k)
    out = np.zeros(max_k)
    for k in range(1, max_k + 1):
        g = nx.DiGraph()
        g.add_nodes_from(range(len(d)))
        g.add_edges_from((i, int(j)) for i, row in enumerate(lists) for j in row[:k])
        out[k - 1] = nx.overall_reciprocity(g)
    return out


def nn_similarity(x, d):
    """[N]: cosine between x_i - x_nn1(i) and x_i - x_nn2(i), nn1 and nn2 the nearest and
    second-nearest neighbours (self excluded, ties to the lower index)."""
    x = np.asarray(x, np.float64)
    lists = neighbour_lists(d, 2)
    a, b = x - x[lists[:, 0]], x - x[lists[:, 1]]
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def curvature(x):
    """Mean over t of arccos(v_t . v_{t+1}), v_t = (x_{t+1} - x_t) / |x_{t+1} - x_t|, the
    tokens in their order (Hosseini & Fedorenko 2023, NeurIPS, "Large language models
    implicitly learn to straighten neural sentence trajectories")."""
    v = np.diff(np.asarray(x, np.float64), axis=0)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return float(np.mean(np.arccos(np.clip(np.sum(v[:-1] * v[1:], axis=1), -1.0, 1.0))))


def information_imbalance(d_a, d_b):
    """(Delta(a -> b), Delta(b -> a)), Delta(A -> B) = 2 / N^2 sum_i rank_B(i, nn_A(i)),
    k = 1, ranks from 1 with the point itself excluded and ties to the lower index
    (Glielmo et al. 2022, PNAS Nexus 1(2), pgac039, eq. 1)."""
    n = len(d_a)

    def delta(p, q):
        nn = neighbour_lists(p, 1)[:, 0]
        order = neighbour_lists(q, n - 1)
        rank = np.zeros((n, n), np.int64)
        rank[np.arange(n)[:, None], order] = np.arange(1, n)
        return 2.0 / n**2 * rank[np.arange(n), nn].sum()

    return np.array([delta(d_a, d_b), delta(d_b, d_a)])


def inf_imb_dadapy(x, y):
    """DADApy ``MetricComparisons(np.hstack([x, y]), maxk=N-1)
    .return_inf_imb_two_selected_coords(range(Dx), range(Dx, Dx + Dy), k=1)``: full
    ranks (scikit-learn's exact k-NN on the float64 coordinates), so no random rank."""
    from dadapy import MetricComparisons

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, dx = x.shape
    mc = MetricComparisons(coordinates=np.hstack([x, y]), maxk=n - 1, verbose=False)
    cols = list(range(dx)), list(range(dx, dx + y.shape[1]))
    return np.array(mc.return_inf_imb_two_selected_coords(*cols, k=1), np.float64)


def observables_case(case):
    """The fields of an observables_reference case (its README's second table); the graph
    and trajectory fields only where the case holds them (cube_dups does not)."""
    points = case["points"]
    out = {}
    fields = {
        f: [] for f in ("mle", "tle", "participation_ratio", "matrix_entropy_1", "matrix_entropy_2")
    }
    for layer, x in enumerate(points):
        distinct = x[first_occurrence(x)]
        m, out[f"mle_pw_{layer}"] = mle_skdim(distinct)
        t, out[f"tle_pw_{layer}"] = tle_skdim(distinct)
        fields["mle"].append(m)
        fields["tle"].append(t)
        fields["participation_ratio"].append(participation_ratio(x))
        e1, e2 = matrix_entropies(x)
        fields["matrix_entropy_1"].append(e1)
        fields["matrix_entropy_2"].append(e2)
    out |= {f: np.array(v) for f, v in fields.items()}
    if "reciprocity" in case:
        dists = [distance_matrix(x) for x in points]
        out["reciprocity"] = np.stack([reciprocity(d) for d in dists])
        out["nn_similarity"] = np.stack([nn_similarity(x, d) for x, d in zip(points, dists)])
        out["nn_similarity_mean"] = out["nn_similarity"].mean(axis=1)
        out["curvature"] = np.array([curvature(x) for x in points])
        out["info_imbalance"] = np.stack(
            [information_imbalance(a, b) for a, b in zip(dists[:-1], dists[1:])]
        )
    return out


def observables_cross_checks(case):
    """DADApy's information imbalance on the same layers, which the README says equals
    the definition with full ranks: {"info_imbalance (DADApy)": [L-1, 2]}."""
    if "info_imbalance" not in case:
        return {}
    p = case["points"]
    return {"info_imbalance (DADApy)": np.stack([inf_imb_dadapy(a, b) for a, b in zip(p, p[1:])])}


# ---------------------------------------------------------------- clouds_reference


def clouds_case(case):
    """The fields of a clouds_reference case (its README's third table), DADApy 0.3.4 with
    the distances it computes itself (scikit-learn's exact k-NN on the float64 coordinates).

    Per layer, on the distinct rows (first occurrence kept): ``Data(X_unique)
    .return_id_scaling_gride(range_max=1024)`` ids (Denti et al. 2022) and, on the same
    object, ``compute_id_2NN(mu_fraction=0.9)`` (Facco et al. 2017). On all N rows:
    ``Data(X).compute_distances()`` (DADApy's default maxk, min(100, N - 1)) and
    ``return_label_overlap(labels, k=30)`` / ``(labels, class_fraction=0.3)`` (Doimo et
    al. 2020, NeurIPS, "Hierarchical nucleation in deep neural networks"; the class
    fraction as in Doimo et al. 2024, arXiv 2409.03662; weighted inversely to the class
    size); ``Data(X_l).return_data_overlap(dist_indices=<Data(X_{l+1})
    .compute_distances(maxk=30)>, k=30)`` (chi_30); information imbalance as
    ``inf_imb_dadapy``.

    Where a cloud holds exact copies (smollm2_last_token: 5 pairs), DADApy takes column 0
    of a k-NN list as the point itself, and which copy scikit-learn lists first depends on
    how many neighbours it was asked for: the fixture's label overlaps come from 101
    neighbours (maxk 100) and its chi_30 from 31 (maxk 30); other counts give other values
    (up to 2.6e-3 at class_fraction 0.3)."""
    from dadapy import Data

    points, labels = case["points"], case["labels"]
    ids, twonn, label_k30, label_cf03, knn30 = [], [], [], [], []
    for x in points:
        distinct = Data(coordinates=x[first_occurrence(x)], verbose=False)
        ids.append(distinct.return_id_scaling_gride(range_max=1024)[0])
        twonn.append(float(quiet(distinct.compute_id_2NN, mu_fraction=0.9)[0]))
        full = Data(coordinates=x, verbose=False)
        full.compute_distances()
        label_k30.append(full.return_label_overlap(labels, k=30))
        label_cf03.append(full.return_label_overlap(labels, class_fraction=0.3))
        neighbours = Data(coordinates=x, verbose=False)
        neighbours.compute_distances(maxk=30)
        knn30.append(neighbours.dist_indices)
    overlap = [
        Data(coordinates=x, verbose=False).return_data_overlap(dist_indices=nn, k=30)
        for x, nn in zip(points[:-1], knn30[1:])
    ]
    return {
        "gride_ids": np.stack(ids),
        "twonn": np.array(twonn),
        "overlap_k30": np.array(overlap, np.float64),
        "info_imbalance": np.stack([inf_imb_dadapy(a, b) for a, b in zip(points, points[1:])]),
        "label_overlap_k30": np.array(label_k30, np.float64),
        "label_overlap_cf03": np.array(label_cf03, np.float64),
    }


# ---------------------------------------------------------------- driver


def case_kind(fields):
    if "twonn_base" in fields:
        return metrics_case
    if "mle" in fields:
        return observables_case
    if "twonn" in fields:
        return clouds_case
    raise ValueError(f"unknown case with fields {sorted(fields)}")


def deviation(new, ref):
    """(max absolute, max relative) deviation; NaNs must sit at the same places."""
    new, ref = np.asarray(new, np.float64), np.asarray(ref, np.float64)
    if new.shape != ref.shape:
        return np.inf, np.inf
    nan_new, nan_ref = np.isnan(new), np.isnan(ref)
    if np.any(nan_new != nan_ref):
        return np.inf, np.inf
    diff = np.abs(new - ref)[~nan_ref]
    if diff.size == 0:
        return 0.0, 0.0
    scale = np.abs(ref)[~nan_ref]
    rel = np.where(diff == 0, 0.0, diff / np.where(scale > 0, scale, np.inf))
    return float(diff.max()), float(rel.max())


def limit_of(field):
    base = field.split(" ")[0]
    base = base.rsplit("_", 1)[0] if base[-1].isdigit() and "_pw_" in base else base
    return LIMITS[base]


def regenerate(fixture):
    """(arrays in the fixture's key order with the values recomputed, cross-checks).

    A case's computation sees its inputs and the names of its value fields (as None),
    so that it knows which optional fields the case holds."""
    cases = {}
    for key in fixture.files:
        case, field = key.split("/", 1)
        value = fixture[key] if field in INPUTS else None
        cases.setdefault(case, {})[field] = value
    values, extra = {}, {}
    for case, fields in cases.items():
        outputs = [f for f in fields if f not in INPUTS]
        compute = case_kind(fields)
        print(f"{case}: {compute.__name__} on points {fields['points'].shape}", flush=True)
        result = compute(fields)
        missing = [f for f in outputs if f not in result]
        if missing:
            raise KeyError(f"{case}: no definition for {missing}")
        values |= {f"{case}/{f}": result[f] for f in outputs}
        if compute is observables_case:
            extra |= {f"{case}/{f}": v for f, v in observables_cross_checks(fields).items()}
    arrays = {key: values.get(key, fixture[key]) for key in fixture.files}
    return arrays, extra


def check(arrays, extra, fixture):
    failed = []
    print(f"{'key':44s} {'max abs':>10s} {'max rel':>10s}  limit")
    rows = [(k, v, fixture[k]) for k, v in arrays.items() if k.split("/", 1)[1] not in INPUTS]
    rows += [(k, v, fixture[k.split(" ")[0]]) for k, v in extra.items()]
    for key, new, ref in rows:
        kind, limit = limit_of(key.split("/", 1)[1])
        dev_abs, dev_rel = deviation(new, ref)
        ok = (dev_rel if kind == "rel" else dev_abs) <= limit
        verdict = "ok" if ok else "FAIL"
        print(f"{key:44s} {dev_abs:10.2e} {dev_rel:10.2e}  {kind} {limit:.0e} {verdict}")
        if not ok:
            failed.append(key)
    return failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixture", help="an existing fixture: its inputs are read")
    parser.add_argument("out", help="the npz to write")
    parser.add_argument("--check", action="store_true", help="compare with FIXTURE's values")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    np.seterr(all="ignore")
    print(" ".join(f"{k} {v}" for k, v in versions().items()), flush=True)
    fixture = np.load(args.fixture)
    arrays, extra = regenerate(fixture)
    np.savez_compressed(args.out, **arrays)
    if args.check:
        failed = check(arrays, extra, fixture)
        print("FAILED: " + ", ".join(failed) if failed else "all fields within their limits")
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
