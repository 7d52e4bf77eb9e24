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
evaluation (benchmarks/reference.py) under each of XLA's default (AVX-512),
AVX2, AVX and SSE4.2 code generations on an AMD EPYC (Zen 5), and the
instruction sets differ from each other and from the goldens (made on another
machine) by at most 4.4e-7 (6 ULP): BUILD_NOTES section 14.
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


# ------------------------------------------------------------------ neighbour order


def neighbour_swaps(points, max_k):
    """[N, max_k]: how many members of each point's top-k list (k = 1..max_k,
    self excluded) a float32 computation may exchange with non-members.

    The float32 squared distance sum_d (x_i - x_j)^2 is within (D + 2) u of the
    exact one (D differences, D squares, a D-term sum of non-negative terms),
    so two neighbours can be ordered either way, on some processor, only when
    their float64 squared distances are within 2 (D + 2) u = (D + 2) eps of
    each other, relative. Identical vectors tie exactly in any order.
    """
    x = np.asarray(points, np.float64)
    n, d = x.shape
    rel = (d + 2) * EPS32
    sq = cdist(x, x, "sqeuclidean")
    np.fill_diagonal(sq, np.inf)
    order = np.argsort(sq, axis=1, kind="stable")
    s = np.take_along_axis(sq, order, axis=1)
    group = np.unique(x, axis=0, return_inverse=True)[1].reshape(-1)[order]
    out = np.zeros((n, max_k), np.int64)
    col = np.arange(n)[None, :]
    for k in range(1, max_k + 1):
        inside = (col < k) & (s >= s[:, k : k + 1] * (1 - rel))
        outside = (col >= k) & (s * (1 - rel) <= s[:, k - 1 : k])
        window = inside | outside
        distinct = np.where(window, group, n).min(1) != np.where(window, group, -1).max(1)
        out[:, k - 1] = np.where(distinct, np.minimum(inside.sum(1), outside.sum(1)), 0)
    return out


def overlap_atol(x, mask, max_k):
    """Absolute tolerance [B, L-1, max_k] of chi_k between layers l and l + 1 of
    x [B, L, N, D] (mask [B, N] or None) across processors and against float64:
    a swap in either list moves the shared count of one point by at most one."""
    x = np.asarray(x)
    b_count, layers, n = x.shape[:3]
    out = np.zeros((b_count, layers - 1, max_k))
    for b in range(b_count):
        valid = np.ones(n, bool) if mask is None else np.asarray(mask[b], bool)
        swaps = [neighbour_swaps(x[b, layer][valid], max_k) for layer in range(layers)]
        for layer in range(layers - 1):
            counts = (swaps[layer] + swaps[layer + 1]).sum(0)
            out[b, layer] = counts / (valid.sum() * np.arange(1, max_k + 1))
    return out


def reciprocity_atol(points, max_k):
    """Absolute tolerance [L, max_k] of the k-NN reciprocity of each cloud of
    points [L, N, D]: a swap in point i's list (j out, j' in) changes the
    reciprocation of at most the four edges i-j, j-i, i-j', j'-i, of N k."""
    points = np.asarray(points)
    n = points.shape[1]
    swaps = np.stack([neighbour_swaps(p, max_k).sum(0) for p in points])
    return 4 * swaps / (n * np.arange(1, max_k + 1))


# ------------------------------------------------------------------ matrix entropy

SINGULAR_VALUE_EPS = 4
"""Absolute error of the float32 singular values of the unit rows U, in units of
eps sigma_max: the rows' own rounding (eps per entry) and LAPACK's backward-stable
SVD. Measured at most 2.1 eps sigma_max over the oracle batch, the observables
fixtures and clouds at offsets 0 to 300 (BUILD_NOTES section 14); twice that."""


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
