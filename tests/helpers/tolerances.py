"""Tolerances the tests state once: golden outputs across processors, and the
float64 oracle of the matrix entropy.

Golden outputs (tests/fixtures/*.npz) were written on one machine. XLA:CPU's
float32 reductions keep one partial sum per vector lane, so their order, and
the last bits of every reduced quantity, follow the processor's instruction
set (4 float32 lanes with SSE4.2, 8 with AVX2, 16 with AVX-512) and its
matmul kernels. A golden is therefore compared field by field at the
tolerance below; two code paths in one process (chunked or not, the paper's
set alone or inside ``all``, host or XLA selection, resumed or not) still
compare with ``np.testing.assert_array_equal``.

Float32 fields: REORDER_RTOL, from the rounding of a reordered float32 sum.
Summing n terms rounds ~sqrt(n) times u = eps / 2 relative in the typical
(random-walk) case; lane-parallel sums run n / W terms per lane, W >= 4. Two
orders of the longest pinned reductions (n <= 300 points, W = 4) then differ
by ~sqrt(2 n / W) u = 7e-7, times the field's amplification a (written per
field; a <= 2). 2e-6 (17 eps) covers a = 2 at n = 300 with 1.4x to spare.
On this project's inputs every float32 field is within 3.4e-7 of its float64
evaluation (tests/reference/oracle.py) under each of XLA's default (AVX-512),
AVX2, AVX and SSE4.2 code generations on an AMD EPYC (Zen 5), and the
instruction sets differ from each other and from the goldens (made on another
machine) by at most 4.4e-7 (6 ULP): docs/history.md section 14.
Integer counts, fields that are exact functions of integer counts, and NaN
positions compare exactly; neighbour counts allow one step per pair of
neighbours that float32 cannot order on every processor (overlap_atol).
"""

import dataclasses

import numpy as np
from scipy.spatial.distance import cdist

EPS32 = float(np.finfo(np.float32).eps)
REORDER_RTOL = 2e-6


@dataclasses.dataclass(frozen=True)
class Tolerance:
    rtol: float  # 0.0: bit for bit
    reason: str


def _reordered(what):
    return Tolerance(REORDER_RTOL, what)


def _exact(what):
    return Tolerance(0.0, what)


GOLDEN = {
    "gride_ids": _reordered(
        "root of the GRIDE score, a float32 sum over the n kept ratios of one scale, found "
        "by bisection to float32 resolution: the root moves by a <= 2 times the sum's "
        "relative rounding (sum |terms| / |d score'(d)| <= 2.00 at the root, float64, on "
        "every pinned cloud); the ratios come from distances (D-term sums, a = 1/2 by the "
        "sqrt). Measured: 3.0e-7 from float64, 4.0e-7 between instruction sets"
    ),
    "gride_errs": _reordered(
        "1 / sqrt(Fisher information) at the root: the id's rounding (a = 2, through d^2, "
        "halved by the sqrt) plus a sum of n positive terms (halved): a <= 1.5. Measured: "
        "3.4e-7 from float64, 4.4e-7 between instruction sets"
    ),
    "gride_scales": _reordered(
        "mean over n points of (r_n1 + r_n2) / 2, positive terms, each r the sqrt of a D-term "
        "sum of squares: a = 1. Measured: 2.0e-7 from float64, 1.8e-7 between sets"
    ),
    "twonn": _reordered(
        "slope sum(x y) / sum(x x) over the sorted log ratios kept: two sums of positive "
        "terms, a = sqrt(2). Measured: 3.0e-7 from float64, 3.6e-7 between sets"
    ),
    "twonn_ml": _reordered(
        "(n - 1) / sum log(r2 / r1): one sum of positive terms, a = 1. Measured: 2.5e-7 "
        "from float64, 2.7e-7 between sets"
    ),
    "cos_mean": _reordered(
        "|sum_i u_i|^2 / N^2, u_i the unit rows: D sums over N points, squared and summed "
        "(a = 2 on the component sums, which carry the mean). Measured: 2.9e-7 from "
        "float64, 3.7e-7 between sets"
    ),
    "cos_std": _reordered(
        "sqrt of the mean squared deviation over N^2 pairs (a matrix-vector product and a "
        "sum, halved by the sqrt): a = 1/2 per sum. Measured: 1.3e-7 from float64, 1.2e-7 "
        "between sets"
    ),
    "loss": _reordered("mean of the T - 1 token NLLs: one sum, a = 1. Measured: bit-identical"),
    "n_unique": _exact(
        "an integer count of distinct points (exact duplicates, and pairs within "
        "duplicate_tolerance x R of each other: the pinned clouds' closest distinct pairs "
        "are >= 0.03 R apart, 3000 times the tolerance, and the curve runs with the test "
        "off), so no processor's rounding decides one"
    ),
    "overlap": _exact(
        "integer counts of shared neighbours over neighbour lists exact in float32, divided "
        "once by N k (correctly rounded on any IEEE processor): bit for bit, except that two "
        "neighbours whose squared distances lie within float32's worst-case error of each "
        "other may be ordered otherwise by another processor; overlap_atol allows one count "
        "per such swap and list (0 on most clouds)"
    ),
    "token_nll": _exact("the input NLL times the 0/1 target mask"),
}


def assert_matches_golden(got, want, field, where="", atol=0.0):
    """got against the golden want at the stated tolerance of field (a KeyError
    for a field without one): same shape and dtype, NaN at the same places,
    the rest within GOLDEN[field].rtol (0: bit for bit) or, for an exact field,
    within atol (broadcast against want; overlap_atol for `overlap`)."""
    tol = GOLDEN[field]
    got, want = np.asarray(got), np.asarray(want)
    msg = f"{where}{field} (tolerance: {tol.reason})"
    assert got.shape == want.shape and got.dtype == want.dtype, (
        msg,
        got.shape,
        got.dtype,
        want.shape,
        want.dtype,
    )
    if want.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=msg + ": NaN")
    if tol.rtol > 0.0 and want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=tol.rtol, atol=0.0, err_msg=msg)
    elif np.any(atol):
        off = np.abs(got.astype(np.float64) - want) > np.broadcast_to(atol, want.shape)
        assert not off.any(), (msg, np.argwhere(off)[:5], got[off][:5], want[off][:5])
    else:
        np.testing.assert_array_equal(got, want, err_msg=msg)


# ------------------------------------------------------------------ rank-derived fields
#
# Fields computed from neighbour ranks or neighbour sets move in steps when two
# candidates that float32 cannot order swap: a code path, a processor or a float64
# reference may order them either way. Each rule below returns, from the input, the
# largest change such swaps can cause (0 when the data has no near-ties, and then
# the comparison is exact up to the field's final rounding). Two code paths, a
# processor and a golden, or geom-jax and a float64 reference, compare through
# assert_rank_field with that tolerance and never at a fixed rtol / atol.
#
# Windows. A float32 squared distance by direct differences, sum_d (x_i - x_j)^2,
# is within (D + 2) u of the exact one (u = eps / 2): two candidates can be ordered
# either way only when their float64 squared distances are within (D + 2) eps of
# each other, relative. A rank counted on Gram keys |c_m|^2 - 2 c_i . c_m of the
# centred points c (metrics/neighbours/ranks.py) errs by <= (D + 3) u (|c_m|^2 + 2 |c_i| |c_m|)
# per key (D u from the sums, 2 u from the centring, u from the subtraction), so
# keys m and j can be counted in either order when they lie within the sum of
# their two bounds, absolute (per pair: the norms of m and j, not the cloud's
# largest, which for LLM clouds with an outlying token is 10x the typical). Inner
# products of unit rows (mutual k-NN) err by <= (D + 2) u plus the normalisation's
# few u: window (D + 4) eps, absolute. Candidates whose float64 values are exactly
# equal (identical vectors, integer lattices whose float32 sums are exact) are
# ordered by index on every path, so they never swap.


def _sq_distances(x):
    sq = cdist(x, x, "sqeuclidean")
    np.fill_diagonal(sq, np.inf)
    return sq


def _window_swaps(dist, max_k, rel, abs_=0.0):
    """[N, max_k]: for each row of dist [N, N] (smaller = nearer, inf on the
    diagonal) and k = 1..max_k, how many members of the top-k set may be exchanged
    with non-members, two values a, b being unorderable when
    0 < |a - b| <= rel max(a, b) + abs_ (exactly equal values tie by index).

    On the sorted row s: members within the window below s_k (the first
    non-member) and non-members within it above s_{k-1} (the last member), each
    counted by binary search; the smaller count is how many can trade places."""
    n = dist.shape[0]
    s = np.sort(dist, axis=1)
    out = np.zeros((n, max_k), np.int64)
    top_k = min(max_k, n - 1)
    if top_k < 1:
        return out
    ks = np.arange(1, top_k + 1)
    for i, row in enumerate(s):
        nxt, top = row[ks], row[ks - 1]
        with np.errstate(invalid="ignore"):  # k = N - 1: no non-member (s_k = inf)
            low = nxt - (rel * nxt + abs_)
        inside = np.searchsorted(row, nxt, "left") - np.searchsorted(row, low, "left")
        inside = np.where(np.isfinite(nxt), inside, 0)
        # b - top <= rel b + abs_  <=>  b <= (top + abs_) / (1 - rel)
        high = (top + abs_) / (1.0 - rel)
        outside = np.searchsorted(row, high, "right") - np.searchsorted(row, top, "right")
        out[i, :top_k] = np.minimum(inside, outside)
    return out


def neighbour_swaps(points, max_k, distance_rtol=0.0):
    """[N, max_k]: how many members of each point's top-k Euclidean list (k =
    1..max_k, self excluded) float32 may exchange with non-members.

    distance_rtol: for points that are themselves another computation's float32
    output (a forward on another mesh), the relative difference of each distance
    between the two computations; squared distances then differ by up to
    2 distance_rtol each, widening the window by 4 distance_rtol."""
    x = np.asarray(points, np.float64)
    return _window_swaps(_sq_distances(x), max_k, (x.shape[1] + 2) * EPS32 + 4.0 * distance_rtol)


def inner_product_swaps(points, max_k):
    """As neighbour_swaps for lists by the inner product of the unit rows (mutual
    k-NN, CKNNA: platonic-rep's normalised features)."""
    x = _unit_rows(points)
    score = -(x @ x.T)
    np.fill_diagonal(score, np.inf)
    return _window_swaps(score, max_k, 0.0, (x.shape[1] + 4) * EPS32)


def _valid(points, mask):
    points = np.asarray(points, np.float64)
    return points if mask is None else points[np.asarray(mask, bool)]


def _nearest_candidates(x):
    """Per point, the points float32 may pick as its nearest neighbour [list of arrays]."""
    sq = _sq_distances(x)
    rel = (x.shape[1] + 2) * EPS32
    first = sq.min(1, keepdims=True)
    first_index = np.argmin(sq, axis=1)
    close = np.isfinite(sq) & (sq > first) & (sq - first <= rel * sq)
    return [np.union1d(first_index[i : i + 1], np.flatnonzero(close[i])) for i in range(len(x))]


def _imbalance_atol(a, b, block=256):
    """Largest change of Delta(a -> b) = 2 / N^2 sum_i rank_b(i, nn_a(i)): per point,
    the widest interval of ranks from 1 (self excluded, ties by index) that a float32
    count on the Gram keys of b may give any of its nearest-neighbour candidates in a.
    A candidate j's rank runs from 1 + #(keys surely below key_j) to that plus
    #(keys within the pair window of key_j)."""
    n = len(a)
    if n < 2:
        return 0.0
    candidates = _nearest_candidates(a)
    rows = np.concatenate([np.full(len(c), i) for i, c in enumerate(candidates)])
    cols = np.concatenate(candidates)
    c = b - b.mean(0)
    sq = np.sum(c * c, axis=1)
    norms = np.sqrt(sq)
    per_key = (b.shape[1] + 3) * EPS32 / 2.0
    lo, hi = np.full(n, np.inf), np.full(n, -np.inf)
    index = np.arange(n)
    for start in range(0, len(rows), block):
        i, j = rows[start : start + block], cols[start : start + block]
        p = np.arange(len(i))
        keys = sq[None, :] - 2.0 * (c[i] @ c.T)
        size = sq[None, :] + 2.0 * norms[i, None] * norms[None, :]
        key_j, size_j = keys[p, j][:, None], size[p, j][:, None]
        keys[p, i] = np.inf  # the point itself is not ranked
        gap = keys - key_j
        window = per_key * (size + size_j)
        sure = (gap < -window) | ((gap == 0) & (index[None, :] < j[:, None]))
        maybe = (gap != 0) & (np.abs(gap) <= window)
        maybe[p, j] = False
        first = 1 + sure.sum(1)
        np.minimum.at(lo, i, first)
        np.maximum.at(hi, i, first + maybe.sum(1))
    return 2.0 * float(np.sum(hi - lo)) / n**2


def information_imbalance_atol(x, y, mask=None):
    """[..., 2] for metrics.information_imbalance(x, y, mask): Delta(x -> y), Delta(y -> x).

    Point i's nearest neighbour in one representation may be any point within the
    distance window of the nearest; its rank in the other may be anything between the
    points surely closer (plus one) and those possibly closer (plus one). The tolerance
    is 2 / N^2 times the sum over points of the widest such rank interval.
    """
    x, y = np.asarray(x), np.asarray(y)
    batch = x.shape[:-2]
    mask = None if mask is None else np.broadcast_to(mask, x.shape[:-1])
    out = np.zeros(batch + (2,))
    for idx in np.ndindex(*batch):
        m = None if mask is None else mask[idx]
        a, b = _valid(x[idx], m), _valid(y[idx], m)
        out[idx] = (_imbalance_atol(a, b), _imbalance_atol(b, a))
    return out


def _layers_imbalance(x, mask, pairs):
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    b_count = x.shape[0]
    out = np.zeros((b_count, len(pairs), 2))
    for b in range(b_count):
        m = None if mask is None else np.asarray(mask).reshape(b_count, -1)[b]
        clouds = [_valid(layer, m) for layer in x[b]]
        for p, (first, second) in enumerate(pairs):
            out[b, p] = (
                _imbalance_atol(clouds[first[0]], clouds[first[1]]),
                _imbalance_atol(clouds[second[0]], clouds[second[1]]),
            )
    return out


def info_imbalance_next_atol(x, mask=None):
    """[B, L-1, 2] for layer_geometry's info_imbalance_next of x [B, L, N, D]:
    Delta(l-1 -> l) and Delta(l -> l-1) for l = 1..L-1."""
    layers = np.asarray(x).shape[-3]
    return _layers_imbalance(x, mask, [((i - 1, i), (i, i - 1)) for i in range(1, layers)])


def info_imbalance_last_atol(x, mask=None):
    """[B, L, 2] for layer_geometry's info_imbalance_last: Delta(l -> last), Delta(last -> l)."""
    last = np.asarray(x).shape[-3] - 1
    return _layers_imbalance(x, mask, [((i, last), (last, i)) for i in range(last + 1)])


def copy_swaps(points, max_k):
    """[N, max_k]: 1 where point i's top-k list (float64 order) holds some but not all
    copies of an identical vector. geom-jax orders such exact ties by index; an
    implementation whose sort is not stable (np.argsort's default, whose tie order
    follows NumPy's SIMD level) may exchange them."""
    x = np.asarray(points, np.float64)
    n = len(x)
    group = np.unique(x, axis=0, return_inverse=True)[1].reshape(-1)
    order = np.argsort(_sq_distances(x), axis=1, kind="stable")[:, : max(n - 1, 0)]
    groups = group[order]
    sizes = np.bincount(group, minlength=n)
    out = np.zeros((n, max_k), np.int64)
    for k in range(1, min(max_k, n - 1) + 1):
        top = groups[:, :k]
        for i in range(n):
            g, c = np.unique(top[i], return_counts=True)
            out[i, k - 1] = int(np.any(c < sizes[g] - (g == group[i])))
    return out


def overlap_atol(x, mask, max_k, distance_rtol=0.0, index_ties=True):
    """[B, L-1, max_k] for chi_k between layers l and l + 1 of x [B, L, N, D] (mask
    [B, N] or None): a swap in either list moves the shared count of one point by
    at most one (distance_rtol: neighbour_swaps'; index_ties=False for an
    implementation that breaks exact ties in any order: copy_swaps too)."""
    x = np.asarray(x)
    b_count, layers, n = x.shape[:3]
    out = np.zeros((b_count, layers - 1, max_k))
    for b in range(b_count):
        valid = np.ones(n, bool) if mask is None else np.asarray(mask[b], bool)
        swaps = [
            neighbour_swaps(x[b, layer][valid], max_k, distance_rtol)
            + (0 if index_ties else copy_swaps(x[b, layer][valid], max_k))
            for layer in range(layers)
        ]
        for layer in range(layers - 1):
            counts = (swaps[layer] + swaps[layer + 1]).sum(0)
            out[b, layer] = counts / (valid.sum() * np.arange(1, max_k + 1))
    return out


def reciprocity_atol(points, max_k, mask=None):
    """[..., max_k] for the k-NN reciprocity of each cloud of points [..., N, D] (mask
    broadcastable to [..., N], or None): a swap in point i's list (j out, j' in)
    changes the reciprocation of at most the four edges i-j, j-i, i-j', j'-i, of N k
    (N the valid points)."""
    points = np.asarray(points)
    if points.ndim > 2:
        masks = [None] * len(points) if mask is None else np.broadcast_to(mask, points.shape[:-1])
        return np.stack([reciprocity_atol(p, max_k, m) for p, m in zip(points, masks)])
    x = _valid(points, mask)
    return 4 * neighbour_swaps(x, max_k).sum(0) / (len(x) * np.arange(1, max_k + 1))


def mutual_knn_atol(x, y, k, mask=None):
    """Mutual k-NN of clouds x, y [N, D*]: one shared count per swap in either list
    (lists by the inner product of the unit rows), of N k."""
    a, b = _valid(x, mask), _valid(y, mask)
    swaps = inner_product_swaps(a, k)[:, k - 1] + inner_product_swaps(b, k)[:, k - 1]
    return swaps.sum() / (len(a) * k)


def mutual_knn_matrix_atol(a, b, k, mask=None):
    """[La, Lb] for layer_similarity's mutual_knn of every layer pair of a [La, N, Da]
    and b [Lb, N, Db]."""
    swaps = lambda stack: [inner_product_swaps(_valid(x, mask), k)[:, k - 1] for x in stack]
    sa, sb = swaps(np.asarray(a)), swaps(np.asarray(b))
    return np.array([[(p + q).sum() / (len(p) * k) for q in sb] for p in sa])


def _unit_rows(points):
    x = np.asarray(points, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _inner_product_lists(u, k, block=512):
    """Top-k lists by inner product of the unit rows u [n, D] (self excluded, ties to
    the lower index) as (rows, cols) of the n k members, and (rows, cols) of the
    entries a float32 computation may flip: where a row has both a member and a
    non-member within the window (D + 4) eps of its k-th / (k+1)-th value, every such
    member and non-member (inner_product_swaps' window)."""
    n = len(u)
    window = (u.shape[1] + 4) * EPS32
    members, flips = [], []
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        score = -(u[rows] @ u.T)  # smaller = nearer
        score[np.arange(len(rows)), rows] = np.inf
        order = np.argsort(score, axis=1, kind="stable")
        s = np.take_along_axis(score, order, axis=1)
        col = np.arange(n)[None, :]
        top, nxt = s[:, k - 1 : k], s[:, k : k + 1]
        inside = (col < k) & (s < nxt) & (nxt - s <= window)
        outside = (col >= k) & (s > top) & np.isfinite(s) & (s - top <= window)
        swappable = inside.any(1) & outside.any(1)
        r, c = np.nonzero((inside | outside) & swappable[:, None])
        members.append((np.repeat(rows, k), order[:, :k].ravel()))
        flips.append((rows[r], order[r, c]))
    cat = lambda pairs: tuple(np.concatenate(a) for a in zip(*pairs))
    return cat(members), cat(flips)


def _hsic_and_bound(u, v, mask_a, mask_b, flip_a, flip_b):
    """HSIC_u(A, B) (metrics/benchmarks' unbiased estimator, zero diagonals) of the
    masked kernels A = (u u^T) o mask_a, B = (v v^T) o mask_b, and a bound on how far
    it moves when any subset of the entries flip_a of mask_a and flip_b of mask_b
    flips: each of its three sums is a sum of products, bounded term by term by the
    absolute kernel entries that may appear or vanish."""
    from scipy import sparse

    n = len(u)

    def kernel(x, rows, cols):
        return sparse.csr_matrix((np.einsum("nd,nd->n", x[rows], x[cols]), (rows, cols)), (n, n))

    a, b = kernel(u, *mask_a), kernel(v, *mask_b)
    da, db = kernel(u, *flip_a), kernel(v, *flip_b)  # the entries that may change
    da.data, db.data = np.abs(da.data), np.abs(db.data)
    col_a, row_b = np.asarray(a.sum(0)).ravel(), np.asarray(b.sum(1)).ravel()
    trace = a.multiply(b.T).sum()
    hsic = trace + a.sum() * b.sum() / ((n - 1) * (n - 2)) - 2.0 * (col_a @ row_b) / (n - 2)
    abs_a, abs_b = abs(a), abs(b)
    d_trace = da.multiply(abs_b.T).sum() + abs_a.multiply(db.T).sum() + da.multiply(db.T).sum()
    sa, sb = da.sum(), db.sum()
    d_total = abs(a.sum()) * sb + sa * abs(b.sum()) + sa * sb
    kappa, rho = np.asarray(da.sum(0)).ravel(), np.asarray(db.sum(1)).ravel()
    d_cross = np.abs(col_a) @ rho + kappa @ np.abs(row_b) + kappa @ rho
    bound = d_trace + d_total / ((n - 1) * (n - 2)) + 2.0 * d_cross / (n - 2)
    scale = n * (n - 3)
    return hsic / scale, bound / scale


def cknna_atol(x, y, k, mask=None):
    """CKNNA (platonic-rep's, unbiased) of clouds x, y [N, D*]: the largest change
    of HSIC(K M, L M) / (sqrt(HSIC(K M_K, K M_K) HSIC(L M_L, L M_L)) + 1e-6) when
    any of the list entries float32 may order otherwise flip (M_K, M_L the top-k
    masks by inner product of the unit rows, M = M_K o M_L). Each HSIC moves by at
    most its term-by-term bound (_hsic_and_bound); the ratio's extremes over those
    intervals bound the change. 0 when neither cloud has near-ties."""
    u, v = _unit_rows(_valid(x, mask)), _unit_rows(_valid(y, mask))
    (mk, fk), (ml, fl) = _inner_product_lists(u, k), _inner_product_lists(v, k)
    if not len(fk[0]) and not len(fl[0]):
        return 0.0
    n = len(u)
    key = lambda pairs: pairs[0] * n + pairs[1]
    in_k = np.isin(key(mk), key(ml))
    shared = (mk[0][in_k], mk[1][in_k])
    # M may change where one mask may flip and the other holds or may flip there
    holds_l, holds_k = np.union1d(key(ml), key(fl)), np.union1d(key(mk), key(fk))
    fm = np.union1d(key(fk)[np.isin(key(fk), holds_l)], key(fl)[np.isin(key(fl), holds_k)])
    fm = (fm // n, fm % n)
    kl, e_kl = _hsic_and_bound(u, v, shared, shared, fm, fm)
    kk, e_kk = _hsic_and_bound(u, u, mk, mk, fk, fk)
    ll, e_ll = _hsic_and_bound(v, v, ml, ml, fl, fl)
    ratio = lambda a, b, c: a / (np.sqrt(max(b, 0.0) * max(c, 0.0)) + 1e-6)
    centre = ratio(kl, kk, ll)
    corners = [
        ratio(a, b, c)
        for a in (kl - e_kl, kl + e_kl)
        for b in (kk - e_kk, kk + e_kk)
        for c in (ll - e_ll, ll + e_ll)
    ]
    return float(np.max(np.abs(np.array(corners) - centre)))


def imbalance_matrix_atol(a, b, mask=None):
    """[La, Lb, 2] for metrics.imbalance_matrix(a, b): Delta(a_i -> b_j), Delta(b_j -> a_i)."""
    a = [_valid(x, mask) for x in np.asarray(a)]
    b = [_valid(y, mask) for y in np.asarray(b)]
    return np.array([[(_imbalance_atol(x, y), _imbalance_atol(y, x)) for y in b] for x in a])


def _per_cloud(fn, points, labels, mask):
    """fn(cloud [N, D], labels [N], mask [N] or None) over the leading axes of points
    [..., N, D], labels and mask broadcast to [..., N]: an array [...] of fn's results."""
    points = np.asarray(points)
    batch = points.shape[:-2]
    labels = np.broadcast_to(labels, points.shape[:-1])
    mask = None if mask is None else np.broadcast_to(mask, points.shape[:-1])
    out = [
        fn(points[idx], labels[idx], None if mask is None else mask[idx])
        for idx in np.ndindex(*batch)
    ]
    return np.array(out).reshape(batch + np.shape(out[0]))


def _label_terms(points, labels, mask, weighted):
    """The valid points [n, D], their class sizes [n] and weights [n]."""
    x = _valid(points, mask)
    lab = np.asarray(labels)
    lab = lab if mask is None else lab[np.asarray(mask, bool)]
    _, inverse, counts = np.unique(lab, return_inverse=True, return_counts=True)
    size = counts[inverse.reshape(-1)]
    return x, size, 1.0 / size if weighted else np.ones(len(x))


def label_overlap_atol(points, labels, k=30, class_fraction=None, weighted=True, mask=None):
    """Label overlap (metrics.label_overlap's options) of points [..., N, D] (labels
    and mask broadcast to [..., N]) -> [...]: a swap in point i's k_i list exchanges
    at most one neighbour, moving its fraction by 1 / k_i, in a mean with weights
    w_i / sum w."""
    if np.ndim(points) > 2:
        one = lambda p, lab, m: label_overlap_atol(p, lab, k, class_fraction, weighted, m)
        return _per_cloud(one, points, labels, mask)
    x, size, w = _label_terms(points, labels, mask, weighted)
    if class_fraction is None:
        k_i = np.full(len(x), k)
    else:
        k_i = np.maximum(1, (size * float(class_fraction)).astype(np.int64))
    swaps = neighbour_swaps(x, int(k_i.max()))[np.arange(len(x)), k_i - 1]
    return float(np.sum(w * swaps / k_i) / np.sum(w))


def label_overlap_curve_atol(points, labels, max_k, mask=None, weighted=True):
    """[..., max_k] for layer_geometry's label_overlap curve (k = 1..max_k) of points
    [..., N, D] (labels and mask broadcast to [..., N])."""
    if np.ndim(points) > 2:
        one = lambda p, lab, m: label_overlap_curve_atol(p, lab, max_k, m, weighted)
        return _per_cloud(one, points, labels, mask)
    x, _, w = _label_terms(points, labels, mask, weighted)
    return (w @ neighbour_swaps(x, max_k)) / np.sum(w) / np.arange(1, max_k + 1)


def _pair_swaps(x):
    """[N] bool: whether the set of each point's first two neighbours can change (a
    swap at k = 2; one at k = 1 only exchanges the two, and the cosine is symmetric)."""
    return neighbour_swaps(x, 2)[:, 1] > 0


def nn_similarity_atol(points, mask=None):
    """[..., N] per point (0 at masked points) for cos(x_i - x_nn1, x_i - x_nn2) of
    points [..., N, D] (mask [..., N] or None): where the set of the first two
    neighbours can change, any value in [-1, 1] (2); elsewhere 0."""
    points = np.asarray(points)
    if points.ndim > 2:
        masks = [None] * len(points) if mask is None else np.broadcast_to(mask, points.shape[:-1])
        return np.stack([nn_similarity_atol(p, m) for p, m in zip(points, masks)])
    per_point = np.where(_pair_swaps(_valid(points, mask)), 2.0, 0.0)
    if mask is None:
        return per_point
    out = np.zeros(np.asarray(mask).shape)
    out[np.asarray(mask, bool)] = per_point
    return out


def n_unique_atol(points, mask=None, tolerance=1e-5):
    """Distinct points (exact duplicates and pairs within tolerance x the RMS norm R):
    one per pair whose float64 squared distance lies within the float32 window of the
    threshold tolerance^2 R^2 (the distance's (D + 2) eps, R^2's N D-term sum)."""
    x = _valid(points, mask)
    if tolerance <= 0 or len(x) < 2:
        return 0
    limit = tolerance**2 * np.mean(np.sum(x * x, 1))
    sq = np.tril(cdist(x, x, "sqeuclidean"), -1)[np.tril_indices(len(x), -1)]
    window = ((x.shape[1] + 2) + 2 * np.sqrt(x.size)) * EPS32 * max(limit, 0.0)
    return int(np.sum((sq > 0) & (np.abs(sq - limit) <= window)))


def nn_similarity_mean_atol(points, mask=None):
    """The mean over valid points of nn_similarity (layer_geometry's field): the
    per-point rule over the points where it is defined (not a duplicate's NaN)."""
    x = _valid(points, mask)
    swaps = _pair_swaps(x)
    sq = np.sort(_sq_distances(x), axis=1)[:, :2]
    defined = (sq > 0).all(1)
    return 2.0 * np.sum(swaps & defined) / max(int(defined.sum()), 1)


def layer_geometry_atols(x, mask=None, max_k=8, tolerance=1e-5):
    """{field: atol} for every rank-derived field layer_geometry computes on x
    [B, L, N, D] (mask [B, N] or None), shaped like the field."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
        mask = None if mask is None else np.asarray(mask)[None]
    b_count, layers = x.shape[:2]
    masks = [None if mask is None else np.asarray(mask[b], bool) for b in range(b_count)]
    clouds = [[_valid(x[b, i], masks[b]) for i in range(layers)] for b in range(b_count)]
    per_cloud = lambda fn: np.array([[fn(c) for c in row] for row in clouds])
    return {
        "overlap": overlap_atol(x, mask, max_k),
        "reciprocity": np.stack([reciprocity_atol(np.stack(row), max_k) for row in clouds]),
        "info_imbalance_next": info_imbalance_next_atol(x, mask),
        "info_imbalance_last": info_imbalance_last_atol(x, mask),
        "nn_similarity": per_cloud(nn_similarity_mean_atol),
        "n_unique": per_cloud(lambda c: n_unique_atol(c, None, tolerance)),
    }


def assert_no_near_ties(points, max_k, where=""):
    """For data meant to have no neighbours float32 cannot order (then rank-derived
    fields compare exactly): zero swaps by distance and by inner product."""
    for p in np.asarray(points).reshape((-1,) + np.asarray(points).shape[-2:]):
        assert not neighbour_swaps(p, max_k).any(), f"{where}: near-ties by distance"
        assert not inner_product_swaps(p, max_k).any(), f"{where}: near-ties by inner product"


RANK_FIELDS = {
    "overlap": "overlap_atol",
    "reciprocity": "reciprocity_atol",
    "info_imbalance": "information_imbalance_atol",
    "info_imbalance_next": "info_imbalance_next_atol",
    "info_imbalance_last": "info_imbalance_last_atol",
    "label_overlap": "label_overlap_atol",
    "label_overlap_curve": "label_overlap_curve_atol",
    "mutual_knn": "mutual_knn_atol",
    "mutual_knn_matrix": "mutual_knn_matrix_atol",
    "imbalance_matrix": "imbalance_matrix_atol",
    "nn_similarity": "nn_similarity_atol",
    "nn_similarity_mean": "nn_similarity_mean_atol",
    "n_unique": "n_unique_atol",
    "cknna": "cknna_atol",
}
"""Every rank-derived field and the rule that states its tolerance from the input
(CKNNA: a swap changes kernel entries by a data-dependent amount, bounded term by
term; on data without near-ties, assert_no_near_ties, the rule is 0)."""

RANK_ROUNDING = {
    "overlap": (2 * EPS32, 0.0),
    "reciprocity": (2 * EPS32, 0.0),
    "info_imbalance": (2 * EPS32, 0.0),
    "info_imbalance_next": (2 * EPS32, 0.0),
    "info_imbalance_last": (2 * EPS32, 0.0),
    "mutual_knn": (2 * EPS32, 0.0),
    "mutual_knn_matrix": (2 * EPS32, 0.0),
    "imbalance_matrix": (2 * EPS32, 0.0),
    "n_unique": (0.0, 0.0),
    "label_overlap": (REORDER_RTOL, 0.0),
    "label_overlap_curve": (REORDER_RTOL, 0.0),
    "nn_similarity": (0.0, 1e-4),
    "nn_similarity_mean": (0.0, 1e-4),
    "cknna": (0.0, 1e-6),
}
"""(rtol, atol) of each field beyond its rank steps: one float32 division of integer
counts (2 eps relative covers it against float64); label overlap, a float32 weighted
mean of N per-point fractions (reordered: REORDER_RTOL); the nearest-neighbour cosine,
a smooth function of exact squared distances, |error| <= D u (1 + r + r^2) / r with
r = r2 / r1: 1e-4 absolute for r < 150; CKNNA, sums over the N k listed pairs of
float32 inner products (~1e-7 relative each) in a ratio ~1: 1e-6 absolute."""


def rank_atol(field, *inputs, **options):
    """The largest change of the rank-derived ``field`` that neighbours float32 cannot
    order can cause on this input (the rule named in RANK_FIELDS)."""
    return globals()[RANK_FIELDS[field]](*inputs, **options)


def assert_rank_field(got, want, field, atol, where="", rtol=None, round_atol=None):
    """got against want (another path, processor or a float64 reference) for a
    rank-derived field: NaN at the same places, |got - want| <= atol (its rule's
    rank steps) + its rounding (RANK_ROUNDING[field]: rtol |want| + atol; rtol and
    round_atol replace those, e.g. by the tighter rounding of two float32 paths)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (where, field, got.shape, want.shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{where}{field}: NaN")
    default_rtol, default_atol = RANK_ROUNDING[field]
    rtol = default_rtol if rtol is None else rtol
    round_atol = default_atol if round_atol is None else round_atol
    limit = np.broadcast_to(atol, want.shape) + rtol * np.abs(want) + round_atol
    off = ~np.isnan(want) & (np.abs(got - want) > limit)
    assert not off.any(), (
        f"{where}{field}: beyond the rank rule ({RANK_FIELDS.get(field)}) at "
        f"{np.argwhere(off)[:5].tolist()}: got {got[off][:5]}, want {want[off][:5]}, "
        f"allowed {limit[off][:5]}"
    )


# ------------------------------------------------------------------ matrix entropy

SINGULAR_VALUE_EPS = 4
"""Absolute error of the float32 singular values of the unit rows U, in units of
eps sigma_max: the rows' own rounding (eps per entry) and LAPACK's backward-stable
SVD. Measured at most 2.1 eps sigma_max over the oracle batch, the observables
fixtures and clouds at offsets 0 to 300 (docs/history.md section 14); twice that."""


def matrix_entropy_rtol(p, alpha):
    """Relative tolerance of the float32 matrix entropy of order alpha against
    float64, from its conditioning on the float64 spectrum p (eigenvalues of
    rho = C / N, largest first).

    geom_jax takes the eigenvalues from the singular values of U, the largest
    from the trace: first order, |dS| <= sum_{i>0} |dS/dp_i| |dp_i| with
    |dp_i| <= 2 sqrt(p_i p_0) delta, delta = SINGULAR_VALUE_EPS eps, and
    dS/dp_i = alpha / (1 - alpha) (p_i^(alpha-1) - p_0^(alpha-1)) / sum p^alpha
    (log(p_0 / p_i) at alpha = 1); plus 8 eps for the final logs and sums. A
    cloud far from the origin (p_0 near 1, S ~ 1e-2) has a large
    sum |dS/dp_i| sqrt(p_i p_0) / S, hence a larger tolerance.
    """
    p = np.asarray(p, np.float64)
    top, rest = p[0], p[1:][p[1:] > 0]
    if alpha == 1.0:
        entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
        slope = np.log(top / rest)
    else:
        power = np.sum(p[p > 0] ** alpha)
        entropy = np.log(power) / (1.0 - alpha)
        slope = alpha / (1.0 - alpha) * (rest ** (alpha - 1) - top ** (alpha - 1)) / power
    delta = SINGULAR_VALUE_EPS * EPS32
    return 8 * EPS32 + np.sum(np.abs(slope) * 2 * np.sqrt(rest * top) * delta) / abs(entropy)
