"""The rank rules of tests/helpers/tolerances.py: every comparison of a rank-derived field goes
through them (a scan of the test files), and each rule gives what it claims on small
hand-made clouds (0 without near-ties, one step per swap float32 cannot order, a bound
that contains the true spread), so that a broken rule fails here."""

import ast
import os
import re

import numpy as np
import pytest
from helpers import tolerances
from reference import oracle

HERE = os.path.dirname(os.path.abspath(__file__))

# ------------------------------------------------------------------ (a) the scan

RANK_NAMES = sorted(
    set(tolerances.RANK_FIELDS)
    | {"overlap_k30", "info_imbalance", "imbalance", "information_imbalance"}
    | {"neighbourhood_overlap"}
)
"""Names of rank-derived fields (and of the functions that compute them)."""

NAMED = re.compile(
    r"(?<![A-Za-z0-9])(" + "|".join(map(re.escape, RANK_NAMES)) + r")(?![A-Za-z0-9])"
)
"""A rank name, delimited by anything but a letter or digit (so `geo.overlap`,
"manifold/overlap_k30", `information_imbalance(` match; `overlapping` does not)."""

FIXED_CALLS = {"assert_allclose", "assert_array_less", "approx", "allclose", "isclose"}
TOL_NAME = re.compile(r"TOL$", re.IGNORECASE)
ATOL_POSITION = {"assert_rank_field": 3, "assert_matches_golden": 4}
"""Where the tolerances comparisons take their atol (a nonzero number there is a
fixed tolerance; 0 is exact, a rule's result is the rule)."""


def _name(node):
    """The called name of a Call's func: `a.b.c` -> "c"."""
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _from_tolerances(call):
    """A call of tolerances.<rule> (the legitimate route, whatever its keywords)."""
    func = call.func
    return isinstance(func, ast.Attribute) and _name(func.value) == "tolerances"


def _fixed_number(node):
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
        and node.value != 0
    )


def _is_fixed_tolerance(node):
    """A comparison at a fixed tolerance: assert_allclose / assert_array_less / approx /
    allclose / isclose, any other call with rtol= or atol= (not tolerances.*), a
    difference compared `<` / `<=` with a number or a *TOL name, or
    tolerances.assert_rank_field / assert_matches_golden given a nonzero number as its
    atol (a constant where a rule belongs)."""
    if isinstance(node, ast.Call):
        if _from_tolerances(node):
            position = ATOL_POSITION.get(_name(node.func))
            if position is None:
                return False
            atol = [k.value for k in node.keywords if k.arg == "atol"]
            atol = node.args[position : position + 1] or atol
            return bool(atol) and _fixed_number(atol[0])
        if _name(node.func) in FIXED_CALLS:
            return True
        return any(k.arg in ("rtol", "atol") for k in node.keywords)
    if isinstance(node, ast.Compare):
        if not all(isinstance(op, ast.Lt | ast.LtE) for op in node.ops):
            return False
        bounds = node.comparators
        fixed = any(_fixed_number(b) or TOL_NAME.search(_name(b)) for b in bounds)
        left = node.left
        difference = any(
            isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) for n in ast.walk(left)
        ) or (isinstance(left, ast.Call) and _name(left.func) in ("abs", "fabs"))
        return fixed and (difference or any(TOL_NAME.search(_name(b)) for b in bounds))
    return False


def fixed_tolerance_violations(source, filename="<source>"):
    """["file:line: text"] for every fixed-tolerance comparison in source that names a
    rank-derived field (in the comparison itself: a multi-line call counts whole)."""
    tree = ast.parse(source)
    out = []
    for node in ast.walk(tree):
        if not _is_fixed_tolerance(node):
            continue
        segment = ast.get_source_segment(source, node) or ""
        code = re.sub(r"#[^\n]*", "", segment)  # comments inside the call do not count
        match = NAMED.search(code)
        if match:
            first = segment.splitlines()[0].strip() if segment else ""
            out.append(f"{filename}:{node.lineno}: {match.group(1)}: {first}")
    return sorted(set(out), key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


def _test_sources():
    own = {"helpers/tolerances.py", os.path.basename(__file__)}
    for folder in ("", "helpers/"):
        for name in sorted(os.listdir(os.path.join(HERE, folder))):
            if name.endswith(".py") and folder + name not in own:
                with open(os.path.join(HERE, folder, name), encoding="utf-8") as f:
                    yield f"tests/{folder}{name}", f.read()


def test_no_rank_field_is_compared_at_a_fixed_tolerance():
    """Rank-derived fields compare through tolerances.assert_rank_field (or a golden's
    rule), never at a fixed rtol / atol: every offending comparison, as file:line."""
    found = [v for name, text in _test_sources() for v in fixed_tolerance_violations(text, name)]
    assert not found, "rank-derived fields at a fixed tolerance:\n" + "\n".join(found)


SCAN_CASES = {
    # source: flagged?
    "np.testing.assert_allclose(geo.overlap, want, atol=1e-6)": True,
    'np.testing.assert_allclose(\n    got,\n    z[f"{case}/overlap_k30"],\n    atol=lim,\n)': True,
    "np.testing.assert_allclose(ii, oracle.information_imbalance(x, y), atol=1e-4)": True,
    "np.testing.assert_array_less(np.abs(geo.reciprocity - want), 1e-6)": True,
    "assert float(f(x)) == pytest.approx(oracle.label_overlap(x, labels, 5), abs=TOL)": True,
    'assert abs(got["mutual_knn"] - want) < LIST_TOL': True,
    "assert abs(cknna_value - want) < 1e-6": True,
    'np.isclose(out["n_unique"], 3, atol=1)': True,
    'tolerances.assert_rank_field(got, want, "overlap", 1e-4)': True,
    # legitimate: the rule, a rounding override, exact, smooth fields, value ranges
    'tolerances.assert_rank_field(got, want, "overlap", tolerances.overlap_atol(x, m, 8))': False,
    'tolerances.assert_rank_field(d, np.ones(4), "mutual_knn", 0.0)': False,
    'tolerances.assert_rank_field(g, w, "nn_similarity", a, rtol=2e-5, round_atol=1e-6)': False,
    "np.testing.assert_array_equal(chunked.overlap, whole.overlap)": False,
    "np.testing.assert_allclose(geo.gride_ids, want, rtol=1e-4)": False,
    'assert np.all(np.diag(out["cknna"]) < 1.0) and np.all(np.diag(out["cknna"]) > 0.99)': False,
    "assert abs(got - stored) > 1e-3  # the overlap differs": False,
    "np.testing.assert_allclose(geo.cos_mean, want, atol=1e-5)  # not the overlap": False,
}


@pytest.mark.parametrize("source", sorted(SCAN_CASES))
def test_the_scan_flags_fixed_tolerances_only(source):
    found = fixed_tolerance_violations(source, "case.py")
    assert bool(found) == SCAN_CASES[source], found
    if found:
        assert found[0].startswith("case.py:1: ")


# ------------------------------------------------------------------ (b) the rules

N, D = 24, 16


def _far_cloud(seed, n=N, d=D, radius=(3.0, 6.0)):
    """Points with norms spread over [3, 6) in random directions: no near-ties."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return u * rng.uniform(*radius, (n, 1))


def _tied_cloud(rel=1e-10, seed=0):
    """Point 0 at the origin; points 1 and 2 at squared distances 1 and 1 + rel (float64:
    a near-tie float32 cannot order, for rel below (D + 2) eps); the rest far."""
    x = _far_cloud(seed)
    x[0] = 0.0
    x[1] = 0.0
    x[1, 0] = 1.0
    x[2] = 0.0
    x[2, 1] = np.sqrt(1.0 + rel)
    return x


@pytest.fixture(scope="module")
def clean():
    """Two clouds [N, D], [N, 5] and labels: no near-ties (asserted by the rules' zeros)."""
    rng = np.random.default_rng(1)
    return _far_cloud(2), _far_cloud(3, d=5), rng.integers(0, 3, N)


def test_every_rule_is_zero_without_near_ties(clean):
    x, y, labels = clean
    stack = np.stack([x, _far_cloud(4), _far_cloud(5)])[None]  # [1, 3, N, D]
    tolerances.assert_no_near_ties(stack, 8)
    zero = {
        "neighbour_swaps": tolerances.neighbour_swaps(x, N - 1),
        "inner_product_swaps": tolerances.inner_product_swaps(x, N - 1),
        "overlap": tolerances.overlap_atol(stack, None, 8),
        "reciprocity": tolerances.reciprocity_atol(stack[0], 8),
        "info_imbalance": tolerances.information_imbalance_atol(x, y),
        "info_imbalance_next": tolerances.info_imbalance_next_atol(stack),
        "info_imbalance_last": tolerances.info_imbalance_last_atol(stack),
        "imbalance_matrix": tolerances.imbalance_matrix_atol(stack[0], y[None]),
        "mutual_knn": tolerances.mutual_knn_atol(x, y, 5),
        "mutual_knn_matrix": tolerances.mutual_knn_matrix_atol(stack[0], y[None], 5),
        "cknna": tolerances.cknna_atol(x, y, 5),
        "label_overlap": tolerances.label_overlap_atol(x, labels, 5),
        "label_overlap_cf": tolerances.label_overlap_atol(x, labels, class_fraction=0.5),
        "label_overlap_curve": tolerances.label_overlap_curve_atol(x, labels, 8),
        "nn_similarity": tolerances.nn_similarity_atol(x),
        "nn_similarity_mean": tolerances.nn_similarity_mean_atol(x),
        "n_unique": tolerances.n_unique_atol(x),
        **tolerances.layer_geometry_atols(stack, max_k=8),
    }
    assert {k: float(np.max(v)) for k, v in zero.items()} == dict.fromkeys(zero, 0.0)


def test_a_near_tie_is_one_swap_at_its_k():
    x = _tied_cloud()
    swaps = tolerances.neighbour_swaps(x, 3)
    assert swaps[0].tolist() == [1, 0, 0]  # {1} or {2} at k = 1; {1, 2} either way at 2
    assert not np.delete(swaps, 0, 0).any()
    # overlap with a tie-free cloud: one shared count of one point, 1 / (N k), at k = 1
    chi = tolerances.overlap_atol(np.stack([x, _far_cloud(7)])[None], None, 3)[0, 0]
    np.testing.assert_array_equal(chi, [1.0 / N, 0.0, 0.0])
    # reciprocity: the four edges around the swap, of N k
    np.testing.assert_array_equal(tolerances.reciprocity_atol(x[None], 3)[0], [4.0 / N, 0, 0])
    # the true change: either choice gives overlaps 1 / N apart at k = 1
    y = _far_cloud(7)
    y[0], y[1], y[2] = 0.0, 0.0, 10.0
    y[1, 0] = 1.0  # point 1 is 0's nearest in y as well
    moved = x.copy()
    moved[1, 0] = 1.0 + 1e-6  # the tie resolved the other way, beyond the window
    spread = abs(oracle.overlap(x, y, 1)[0] - oracle.overlap(moved, y, 1)[0])  # chi_1
    assert spread == pytest.approx(1.0 / N) and spread <= chi[0] * (1 + 1e-12)


def test_the_window_is_d_plus_2_eps():
    window = (D + 2) * tolerances.EPS32
    assert tolerances.neighbour_swaps(_tied_cloud(0.5 * window), 1)[0, 0] == 1
    assert tolerances.neighbour_swaps(_tied_cloud(2.0 * window), 1)[0, 0] == 0


def test_exact_duplicates_tie_by_index():
    x = _tied_cloud()
    x[2] = 0.0
    x[2, 0] = 1.0  # x[2] == x[1]: the same distance exactly, ordered by index everywhere
    assert not tolerances.neighbour_swaps(x, 3).any()
    assert not tolerances.overlap_atol(np.stack([x, _far_cloud(7)])[None], None, 3).any()
    assert tolerances.n_unique_atol(x) == 0  # distance 0: a duplicate whatever R


def _imbalance(a, b, nn):
    """Delta(a -> b) in float64 with the nearest neighbours nn [N] given."""
    db = oracle.distances(b)
    np.fill_diagonal(db, np.inf)
    rank = np.argsort(np.argsort(db, axis=1, kind="stable"), axis=1, kind="stable") + 1
    return 2.0 / len(a) ** 2 * rank[np.arange(len(a)), nn].sum()


@pytest.mark.parametrize("r", [1, 4, 9])
def test_information_imbalance_bound_holds_the_rank_spread(r):
    """Point 0's nearest neighbour in x is 1 or 2 (a near-tie); in y their ranks around
    point 0 are 1 and 1 + r: Delta(x -> y) is 2 r / N^2 wide, and the rule says so."""
    x = _tied_cloud()
    y = np.zeros((N, 3))
    radius = 2.0 + 0.5 * np.arange(N)  # point j at radius 2 + j / 2 from point 0 ...
    radius[1], radius[2] = 1.0, radius[2 + r - 1] + 0.25  # ... 1 first, 2 after r - 1 more
    angle = np.random.default_rng(8).uniform(0, 2 * np.pi, N)
    y[:, 0], y[:, 1] = radius * np.cos(angle), radius * np.sin(angle)
    y[0] = 0.0
    nn = np.argmin(np.where(np.eye(N, dtype=bool), np.inf, oracle.distances(x)), axis=1)
    assert nn[0] == 1
    other = nn.copy()
    other[0] = 2
    spread = abs(_imbalance(x, y, nn) - _imbalance(x, y, other))
    assert spread == pytest.approx(2.0 * r / N**2)
    atol = tolerances.information_imbalance_atol(x, y)[0]
    assert spread <= atol <= 2.0 * (r + 1) / N**2, (spread, atol)
    # without the tie the same data has no spread
    assert tolerances.information_imbalance_atol(_tied_cloud(1e-3), y)[0] == 0.0


def test_gram_key_window_is_per_pair():
    """Ranks counted on Gram keys: the window of two keys follows their own norms, so
    one outlying token (100 times the others' norm; LLM clouds hold such tokens) widens
    no other pair's window; with the cloud's largest norm in every window, Delta(x -> y)
    here would have a spread of 0.0104 (5 ranks)."""
    x = _far_cloud(9)
    y = _far_cloud(10, d=5)
    assert tolerances.information_imbalance_atol(x, y).tolist() == [0.0, 0.0]
    y[-1] *= 100.0
    assert tolerances.information_imbalance_atol(x, y)[0] == 0.0


def test_label_overlap_counts_one_over_k_per_swap():
    x = _tied_cloud()
    labels = np.zeros(N, int)
    labels[2] = 1
    w = 1.0 / np.where(labels == 1, 1, N - 1)
    assert tolerances.label_overlap_atol(x, labels, 1) == pytest.approx(w[0] / w.sum())
    assert tolerances.label_overlap_atol(x, labels, 1, weighted=False) == pytest.approx(1 / N)
    curve = tolerances.label_overlap_curve_atol(x, labels, 3, weighted=False)
    np.testing.assert_allclose(curve, [1.0 / N, 0.0, 0.0])


def test_nn_similarity_moves_only_when_the_pair_can_change():
    x = _tied_cloud()  # points 1 and 2 tie for point 0's first place: the pair is {1, 2}
    assert not tolerances.nn_similarity_atol(x).any()
    # point 0's second place tied between points 2 and 3: the pair is {1, 2} or {1, 3}
    x = _far_cloud(15, radius=(10.0, 20.0))
    e = np.eye(D)
    x[0], x[1], x[2] = 0.0, e[0], 2.0 * e[1]
    x[3] = 2.0 * np.sqrt(1.0 + 1e-10) * (0.5 * e[0] + np.sqrt(0.75) * e[2])
    atol = tolerances.nn_similarity_atol(x)
    assert atol[0] == 2.0 and not atol[1:].any()
    assert tolerances.nn_similarity_mean_atol(x) == pytest.approx(2.0 / N)
    # the true change: the cosine at point 0 with either pair
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    spread = abs(cos(-x[1], -x[2]) - cos(-x[1], -x[3]))
    assert 0.4 < spread <= atol[0]


def test_n_unique_counts_pairs_at_the_threshold():
    x = _far_cloud(11)
    x[5] = x[4]
    limit = 1e-5 * np.sqrt(np.mean(np.sum(x * x, 1)))  # tolerance x the RMS norm
    at = x.copy()
    at[5, 0] += limit * (1 + 1e-9)
    assert tolerances.n_unique_atol(at) == 1
    far = x.copy()
    far[5, 0] += limit * 1.5
    assert tolerances.n_unique_atol(far) == 0 and tolerances.n_unique_atol(at, tolerance=0) == 0


def _unit_tie_cloud(k, gap=1e-12):
    """Directions whose inner products with point 0 (e0) are: about 0.99 for points
    1..k-1, then c + gap (point k + 1) and c (point k); the others point away. Points
    1..k-1 share a component with point k only, so they see no tie themselves."""
    rng = np.random.default_rng(12)
    e = np.eye(6)
    x = rng.standard_normal((N, 6))
    x[:, 0] = -np.abs(x[:, 0]) - 1.0
    x[0] = e[0]
    for j in range(1, k):
        x[j] = (0.99 - 0.01 * j) * e[0] + 0.1 * e[j] + 0.05 * e[3]
    c = 0.5
    x[k] = c * e[0] + np.sqrt(1 - c * c) * (0.8 * e[4] + 0.6 * e[3])
    x[k + 1] = (c + gap) * e[0] + np.sqrt(1 - (c + gap) ** 2) * e[5]
    return x


def test_mutual_knn_counts_one_per_inner_product_swap():
    for k in (1, 3):
        x = _unit_tie_cloud(k)
        y = _far_cloud(13, d=4)
        swaps = tolerances.inner_product_swaps(x, k)
        assert swaps[0, k - 1] == 1 and swaps[:, k - 1].sum() == 1
        assert tolerances.mutual_knn_atol(x, y, k) == pytest.approx(1.0 / (N * k))
        assert tolerances.mutual_knn_atol(_unit_tie_cloud(k, 1e-3), y, k) == 0.0


def _cknna(u, v, lists_k, lists_l):
    """The reference CKNNA on given top-k lists (oracle.cknna's dense formula)."""
    n = len(u)
    kk, ll = u @ u.T, v @ v.T
    mk, ml = oracle.knn_mask(lists_k, n), oracle.knn_mask(lists_l, n)
    m = mk * ml
    sim = oracle.hsic_unbiased(m * kk, m * ll)
    norm = np.sqrt(oracle.hsic_unbiased(mk * kk, mk * kk) * oracle.hsic_unbiased(ml * ll, ml * ll))
    return sim / (norm + 1e-6)


@pytest.mark.parametrize("k", [2, 4])
def test_cknna_bound_holds_the_swap(k):
    x = _unit_tie_cloud(k)
    y = x[:, :4] + 0.3 * np.random.default_rng(14).standard_normal((N, 4))  # related lists
    u, v = oracle.normalise_rows(x), oracle.normalise_rows(y)
    lists_k, lists_l = oracle.top_k_by_inner_product(u, k), oracle.top_k_by_inner_product(v, k)
    assert _cknna(u, v, lists_k, lists_l) == pytest.approx(oracle.cknna(x, y, k), rel=1e-12)
    assert lists_k[0, k - 1] == k + 1  # the tie's winner (larger inner product) ...
    swapped = lists_k.copy()
    swapped[0, k - 1] = k  # ... or the other
    change = abs(_cknna(u, v, swapped, lists_l) - _cknna(u, v, lists_k, lists_l))
    atol = tolerances.cknna_atol(x, y, k)
    assert 0.0 < change <= atol, (change, atol)
    assert tolerances.cknna_atol(_unit_tie_cloud(k, 1e-3), y, k) == 0.0


@pytest.mark.parametrize("field, want", [("overlap", 0.5), ("nn_similarity", 0.2)])
def test_assert_rank_field_at_its_limit(field, want):
    atol = 0.01
    rtol, round_atol = tolerances.RANK_ROUNDING[field]
    limit = atol + rtol * want + round_atol
    tolerances.assert_rank_field(want + limit * (1 - 1e-6), want, field, atol)
    tolerances.assert_rank_field(want - limit * (1 - 1e-6), want, field, atol)
    for off in (limit * (1 + 1e-6), -limit * (1 + 1e-6)):
        with pytest.raises(AssertionError, match="beyond the rank rule"):
            tolerances.assert_rank_field(want + off, want, field, atol)
    with pytest.raises(AssertionError):  # NaN where there is none
        tolerances.assert_rank_field([np.nan, want], [want, want], field, atol)
    with pytest.raises(AssertionError):
        tolerances.assert_rank_field([want], [want, want], field, atol)
    # atol 0 is exact up to the field's rounding
    with pytest.raises(AssertionError):
        tolerances.assert_rank_field(want + 2 * (rtol * want + round_atol) + 1e-12, want, field, 0)
