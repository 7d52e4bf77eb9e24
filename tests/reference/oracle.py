"""Float64 NumPy transcription of the geometry definitions, used as a test oracle.

Written from the definitions (tests/fixtures/README.md), independently of
geom_jax.metrics: direct float64 distances, full sorts, a scalar bisection
loop per layer and scale, Python sets for neighbourhood overlap.
"""

import math

import numpy as np
from scipy import sparse
from scipy.spatial.distance import cdist

BISECTION_LO = 1e-3
BISECTION_HI = 1e3
BISECTION_TOL = 1e-7


def unique_first(points, valid=None):
    """Indices of the first occurrence of every distinct valid row, ascending."""
    n = points.shape[0]
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    seen = set()
    keep = []
    for i in range(n):
        if not valid[i]:
            continue
        key = np.asarray(points[i], np.float64).tobytes()
        if key in seen:
            continue
        seen.add(key)
        keep.append(i)
    return np.array(keep, dtype=np.int64)


def distances(points):
    x = np.asarray(points, np.float64)
    return cdist(x, x)


def sorted_neighbour_distances(points):
    """Row-wise sorted distances to all other points (self excluded)."""
    d = distances(points)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :-1]


def neighbour_lists(points, k):
    """k nearest neighbours per point, self excluded, ties by lower index."""
    d = distances(points)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def _score(dim, log_mu, n1, n2, n_points):
    """Minus the derivative of the GRIDE log-likelihood in d (DADApy's N - 1 convention)."""
    one_minus = -np.expm1(-dim * log_mu)
    one_minus = np.maximum(one_minus, 2 * BISECTION_TOL)
    terms = ((1 - n2 + n1) / one_minus + n2 - 1.0) * log_mu
    return terms.sum() - (n_points - 1) / dim


def gride_scale(mu, n1, n2):
    """Denti et al. 2022 maximum likelihood at one scale, DADApy 0.3.4 conventions.

    The likelihood uses the ratios below median + 20 (q95 - median); the
    Fisher information (error) uses all ratios.
    """
    mu = np.asarray(mu, np.float64)
    median = np.median(mu)
    cut = median + 20.0 * (np.quantile(mu, 0.95) - median)
    kept = np.log(mu[mu < cut])
    lo, hi = BISECTION_LO, BISECTION_HI
    s_hi = _score(hi, kept, n1, n2, kept.size)
    while abs(hi - lo) > BISECTION_TOL:
        mid = 0.5 * (lo + hi)
        if _score(mid, kept, n1, n2, kept.size) * s_hi > 0:
            hi = mid
        else:
            lo = mid
    dim = 0.5 * (lo + hi)
    log_mu = np.log(mu)
    p = np.exp(-dim * log_mu)
    one_minus = 1.0 - p
    ratio = np.where(log_mu > 0, log_mu / np.where(log_mu > 0, one_minus, 1.0), 1.0 / dim)
    fisher = mu.size / dim**2 + (n2 - n1 - 1) * np.sum(ratio**2 * p)
    return dim, 1.0 / math.sqrt(fisher)


def gride(points, range_max=256, valid=None):
    keep = unique_first(points, valid)
    return gride_from_sorted(sorted_neighbour_distances(np.asarray(points)[keep]), range_max)


def gride_from_sorted(r, range_max=256):
    """GRIDE (ids, errs, scales) [S] from r [n, >= n - 1]: each point's neighbour
    distances in increasing order, self excluded (column j is rank j + 1)."""
    n = r.shape[0]
    n_scales = int(math.floor(math.log2(min(n, range_max))))
    ids, errs, scales = [], [], []
    for s in range(n_scales):
        n1, n2 = 2**s, 2 ** (s + 1)
        if n2 > n - 1:
            ids.append(np.nan)
            errs.append(np.nan)
            scales.append(np.nan)
            continue
        r1, r2 = r[:, n1 - 1], r[:, n2 - 1]
        dim, err = gride_scale(r2 / r1, n1, n2)
        ids.append(dim)
        errs.append(err)
        scales.append(np.mean(0.5 * (r1 + r2)))
    return np.array(ids), np.array(errs), np.array(scales)


def twonn(points, discard_fraction=0.1, valid=None):
    """Facco et al. 2017; discard_fraction=0 is the maximum-likelihood form."""
    keep = unique_first(points, valid)
    r = sorted_neighbour_distances(np.asarray(points)[keep])
    n = keep.size
    log_mu = np.log(r[:, 1] / r[:, 0])
    if discard_fraction == 0.0:
        return (n - 1) / log_mu.sum()
    n_eff = int(n * (1.0 - discard_fraction))
    x = np.sort(log_mu)[:n_eff]
    y = -np.log(1.0 - np.arange(1, n_eff + 1) / n)
    return float(x @ y / (x @ x))


def overlap(x, y, max_k=32, valid=None):
    """chi_k for k = 1..max_k; element k-1 holds chi_k."""
    x, y = np.asarray(x), np.asarray(y)
    if valid is not None:
        x, y = x[np.asarray(valid, bool)], y[np.asarray(valid, bool)]
    nx, ny = neighbour_lists(x, max_k), neighbour_lists(y, max_k)
    out = np.zeros(max_k)
    for k in range(1, max_k + 1):
        shared = [len(set(nx[i, :k]) & set(ny[i, :k])) for i in range(x.shape[0])]
        out[k - 1] = np.mean(shared) / k
    return out


def cosine_stats(points, valid=None, include_diagonal=True):
    x = np.asarray(points, np.float64)
    if valid is not None:
        x = x[np.asarray(valid, bool)]
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    u = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    c = u @ u.T
    if not include_diagonal:
        c = c[~np.eye(c.shape[0], dtype=bool)]
    return float(c.mean()), float(c.std())


# ---------------------------------------------------------------- observables beyond the paper's


def _valid_points(points, valid):
    x = np.asarray(points, np.float64)
    return x if valid is None else x[np.asarray(valid, bool)]


def reciprocity(points, max_k, valid=None):
    """networkx overall_reciprocity of the k-NN digraph for k = 1..max_k."""
    import networkx as nx

    x = _valid_points(points, valid)
    lists = neighbour_lists(x, max_k)
    out = np.zeros(max_k)
    for k in range(1, max_k + 1):
        g = nx.DiGraph()
        g.add_nodes_from(range(len(x)))
        g.add_edges_from((i, int(j)) for i in range(len(x)) for j in lists[i, :k])
        out[k - 1] = nx.overall_reciprocity(g)
    return out


def nn_similarity(points, valid=None):
    x = _valid_points(points, valid)
    lists = neighbour_lists(x, 2)
    a, b = x - x[lists[:, 0]], x - x[lists[:, 1]]
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def information_imbalance(x, y, valid=None):
    """(Delta(x -> y), Delta(y -> x)) with full ranks from 1, self excluded, k = 1."""
    x, y = _valid_points(x, valid), _valid_points(y, valid)
    n = len(x)

    def delta(a, b):
        da, db = distances(a), distances(b)
        np.fill_diagonal(da, np.inf)
        np.fill_diagonal(db, np.inf)
        nn = np.argmin(da, axis=1)
        rank_b = np.argsort(np.argsort(db, axis=1, kind="stable"), axis=1, kind="stable") + 1
        return 2.0 / n**2 * rank_b[np.arange(n), nn].sum()

    return np.array([delta(x, y), delta(y, x)])


def _knn_distances(points, valid, k):
    keep = unique_first(points, valid)
    x = np.asarray(points, np.float64)[keep]
    d = distances(x)
    np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return keep, x, np.take_along_axis(d, idx, 1), idx


def mle(points, k=20, valid=None):
    """(global, pointwise over the distinct points) Levina-Bickel MLE."""
    _, _, t, _ = _knn_distances(points, valid, k)
    inv = np.mean(np.log(t[:, -1:] / t[:, :-1]), axis=1)
    return 1.0 / inv.mean(), 1.0 / inv


def tle(points, k=20, valid=None, eps=1e-4):
    """(global, pointwise) tight-locality estimator, a transcription of Amsaleg et al.
    2019 as scikit-dimension 0.5 implements it (loops over neighbour pairs)."""
    _, x, t, idx = _knn_distances(points, valid, k)
    out = np.zeros(len(x))
    for i in range(len(x)):
        d, r = t[i], t[i, -1]
        nb = x[idx[i]]
        s1 = 0.0
        dropped = 0
        for a in range(k):
            for b in range(k):
                if a == b:
                    continue
                v2 = float(np.sum((nb[a] - nb[b]) ** 2))
                di, dj = d[a], d[b]
                z2 = 2 * di**2 + 2 * dj**2 - v2
                if v2 == 0:
                    dropped += 1
                    continue
                if di == r:
                    s = r * v2 / (r**2 + v2 - dj**2)
                    tt = r * z2 / (r**2 + z2 - dj**2)
                else:
                    g = r**2 - di**2
                    bs = di**2 + v2 - dj**2
                    bt = di**2 + z2 - dj**2
                    s = r * (math.sqrt(bs**2 + 4 * v2 * g) - bs) / (2 * g)
                    tt = r * (math.sqrt(bt**2 + 4 * z2 * g) - bt) / (2 * g)
                if s < eps or tt < eps:
                    dropped += 1
                    continue
                s1 += math.log(s / r) + math.log(tt / r)
        tiny = int(np.sum(d < eps))
        s2 = np.sum(np.log(d / r)) if tiny == 0 else 0.0
        out[i] = -2 * (k * k - dropped - tiny) / (s1 + 2 * s2)
    return out.mean(), out


def participation_ratio(points, valid=None):
    x = _valid_points(points, valid)
    lam = np.linalg.eigvalsh(np.cov(x.T, bias=True))
    return lam.sum() ** 2 / np.sum(lam**2)


def cosine_spectrum(points, valid=None):
    """Eigenvalues of rho = C / N (C the cosine-similarity matrix), largest first."""
    x = _valid_points(points, valid)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.clip(np.linalg.eigvalsh(u @ u.T / len(x)), 0, None)[::-1]


def matrix_entropy(points, alpha=1.0, valid=None):
    lam = cosine_spectrum(points, valid)
    if alpha == 1.0:
        lam = lam[lam > 0]
        return float(-np.sum(lam * np.log(lam)))
    return float(np.log(np.sum(lam**alpha)) / (1 - alpha))


def curvature(points, valid=None):
    x = _valid_points(points, valid)
    v = np.diff(x, axis=0)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return float(np.mean(np.arccos(np.clip(np.sum(v[:-1] * v[1:], 1), -1, 1))))


# ---------------------------------------------------------------- representational similarity


def normalise_rows(points):
    """Rows divided by their L2 norm in float64 (torch F.normalize, eps 1e-12)."""
    x = np.asarray(points, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def top_k_by_inner_product(x, k, block=256):
    """Columns of the k largest inner products x_i . x_j of each row (j != i, as a
    -inf diagonal), in (value descending, column) order: ties to the lower column.

    Blocks of rows at a time (no N x N matrix). Inner products are taken with the
    distinct rows and spread to their copies, so that exact duplicates tie exactly
    (a matrix product may round identical rows differently). np.partition finds each
    row's k-th largest value t; all columns >= t (every tie at t included) are then
    sorted by (-value, column)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    distinct, copies = np.unique(x, axis=0, return_inverse=True)
    copies = copies.reshape(-1)
    out = np.empty((n, k), np.int64)
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        s = (x[rows] @ distinct.T)[:, copies]
        s[np.arange(len(rows)), rows] = -np.inf
        for row, i in zip(s, rows):
            t = -np.partition(-row, k - 1)[k - 1]
            cand = np.flatnonzero(row >= t)
            out[i] = cand[np.lexsort((cand, -row[cand]))][:k]
    return out


def mutual_knn(x, y, k, valid=None):
    """Mean over points of |N_k^x(i) ∩ N_k^y(i)| / k, neighbours by inner product of the
    normalised features (platonic-rep ``mutual_knn``), ties to the lower index."""
    x, y = normalise_rows(_valid_points(x, valid)), normalise_rows(_valid_points(y, valid))
    a, b = top_k_by_inner_product(x, k), top_k_by_inner_product(y, k)
    return float(np.mean([len(set(p) & set(q)) / k for p, q in zip(a.tolist(), b.tolist())]))


def knn_mask(lists, n):
    """Dense 0/1 matrix M[i, j] = 1 for j in lists[i]."""
    m = np.zeros((n, n))
    m[np.arange(n)[:, None], lists] = 1.0
    return m


def hsic_unbiased(kernel_k, kernel_l):
    """Song et al. 2012, JMLR 13, eq. 5 with K~, L~ the kernels with zero diagonals:
    [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((m-1)(m-2)) - 2/(m-2) 1^T K~ L~ 1] / (m (m-3)).

    Dense (numpy) or scipy.sparse kernels; the diagonal is removed by subtraction,
    and 1^T K~ L~ 1 is evaluated as (1^T K~)(L~ 1), the same number without the
    m^3 product."""
    k, l_ = kernel_k, kernel_l
    m = k.shape[0]
    dk, dl = np.asarray(k.diagonal(), np.float64), np.asarray(l_.diagonal(), np.float64)
    if sparse.issparse(k):
        trace = k.multiply(l_.T).sum() - dk @ dl
    else:
        trace = np.einsum("ij,ji->", k, l_) - dk @ dl
    col_k = np.asarray(k.sum(axis=0), np.float64).ravel() - dk
    row_l = np.asarray(l_.sum(axis=1), np.float64).ravel() - dl
    total_k, total_l = col_k.sum(), row_l.sum()
    value = trace + total_k * total_l / ((m - 1) * (m - 2)) - 2.0 * (col_k @ row_l) / (m - 2)
    return value / (m * (m - 3))


def hsic_biased(kernel_k, kernel_l):
    """tr(K H L H) / (m - 1)^2, H = I - 11^T / m, expanded:
    tr(K L) - 2/m 1^T K L 1 + (1^T K 1)(1^T L 1) / m^2 (symmetric kernels)."""
    k, l_ = np.asarray(kernel_k, np.float64), np.asarray(kernel_l, np.float64)
    m = len(k)
    rk, rl = k.sum(axis=1), l_.sum(axis=1)
    value = np.einsum("ij,ji->", k, l_) - 2.0 / m * (rk @ rl) + rk.sum() * rl.sum() / m**2
    return value / (m - 1) ** 2


def _masked_kernel(x, pairs, n):
    """Sparse [n, n] matrix with x_i . x_j at the (i, j) of pairs (a 0/1 mask)."""
    i, j = pairs.nonzero()
    return sparse.csr_matrix((np.einsum("nd,nd->n", x[i], x[j]), (i, j)), shape=(n, n))


def cknna(x, y, k, valid=None, dense=True):
    """platonic-rep ``cknna`` (unbiased): HSIC_u of the kernels K, L of the normalised
    features masked to the shared k nearest neighbours M = M_K * M_L, over
    sqrt(HSIC_u(K M_K, K M_K) HSIC_u(L M_L, L M_L)) + 1e-6.

    dense: the N x N kernels and masks as platonic-rep builds them; otherwise the
    same masked kernels as scipy.sparse matrices (for large N)."""
    x, y = normalise_rows(_valid_points(x, valid)), normalise_rows(_valid_points(y, valid))
    n = len(x)
    lists_k, lists_l = top_k_by_inner_product(x, k), top_k_by_inner_product(y, k)
    if dense:
        kk, ll = x @ x.T, y @ y.T
        mk, ml = knn_mask(lists_k, n), knn_mask(lists_l, n)
        m = mk * ml
        sim_kl = hsic_unbiased(m * kk, m * ll)
        sim_kk = hsic_unbiased(mk * kk, mk * kk)
        sim_ll = hsic_unbiased(ml * ll, ml * ll)
    else:
        rows = np.repeat(np.arange(n), k)
        mk = sparse.csr_matrix((np.ones(n * k), (rows, lists_k.ravel())), shape=(n, n))
        ml = sparse.csr_matrix((np.ones(n * k), (rows, lists_l.ravel())), shape=(n, n))
        m = mk.multiply(ml)
        sim_kl = hsic_unbiased(_masked_kernel(x, m, n), _masked_kernel(y, m, n))
        a, b = _masked_kernel(x, mk, n), _masked_kernel(y, ml, n)
        sim_kk, sim_ll = hsic_unbiased(a, a), hsic_unbiased(b, b)
    return sim_kl / (np.sqrt(sim_kk * sim_ll) + 1e-6)


def cka(x, y, valid=None, debiased=False):
    """Linear CKA, HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = x x^T, L = y y^T
    (Kornblith et al. 2019, arXiv 1905.00414), biased HSIC or Song et al.'s unbiased one."""
    x = np.asarray(_valid_points(x, valid), np.float64)
    y = np.asarray(_valid_points(y, valid), np.float64)
    kk, ll = x @ x.T, y @ y.T
    hsic = hsic_unbiased if debiased else hsic_biased
    return hsic(kk, ll) / np.sqrt(hsic(kk, kk) * hsic(ll, ll))


def label_overlap(points, labels, k=30, class_fraction=None, weighted=True, valid=None):
    """Fraction of each point's k_i nearest neighbours (Euclidean, self excluded, ties
    to the lower index) with its label; k_i = k or max(1, int(class size * fraction));
    mean weighted by 1 / class size (normalised) or uniform (DADApy's definition)."""
    x = _valid_points(points, valid)
    lab = np.asarray(labels)[np.ones(len(labels), bool) if valid is None else np.asarray(valid)]
    classes, counts = np.unique(lab, return_counts=True)
    size = dict(zip(classes.tolist(), counts.tolist()))
    if class_fraction is None:
        k_i = np.full(len(x), k)
    else:
        k_i = np.array([max(1, int(size[c] * class_fraction)) for c in lab.tolist()])
    lists = neighbour_lists(x, int(k_i.max()))
    o = np.array([np.mean(lab[lists[i, : k_i[i]]] == lab[i]) for i in range(len(x))])
    w = np.array([1.0 / size[c] for c in lab.tolist()]) if weighted else np.ones(len(x))
    return float(np.sum(w * o) / np.sum(w))
