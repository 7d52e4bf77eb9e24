"""Advanced Density Peaks clustering against DADApy 0.3.4, ARI / AMI against scikit-learn
(tests/fixtures/adp_reference.npz, tests/reference/adp_reference.py).

The host clustering is fed DADApy's own log_den, log_den_err, kstar and dist_indices, so
it is checked apart from any density estimate; the JAX route finds its own neighbour
lists (float32, ties to the lower index) and must give the same clustering. Labels are
compared exactly: both number clusters by increasing centre index (DADApy's order), so
no relabelling is needed (``same_partition`` checks the weaker claim too). Saddle
densities are the same float64 operations on the same numbers: compared to 1e-12
relative (measured: equal). ARI / AMI: 1e-12 absolute (measured: ARI equal, AMI within
7e-14).
"""

import os

import numpy as np
import pytest

from geom_jax import metrics
from geom_jax.metrics.measures import density_peaks as dp

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "adp_reference.npz")
REF = dict(np.load(FIXTURE))
CASES = ("mixture", "curved", "ties")
RUNS = ("z1.65", "z1.65_halo", "z3.0", "z3.0_halo")
SCORES = ("random", "identical", "one_pred", "singletons", "small", "large", "all_singletons")
SCORE_TOL = 1e-12


def options(run):
    z, _, halo = run[1:].partition("_")
    return {"Z": float(z), "halo": halo == "halo"}


def densities(case):
    return REF[f"{case}/log_den"], REF[f"{case}/log_den_err"], REF[f"{case}/kstar"]


def lists(case, maxk=100):
    """DADApy's dist_indices without the point itself (its first column)."""
    base = case.partition("_")[0]
    idx = REF[f"{base}/dist_indices"].astype(np.int64)
    assert np.array_equal(idx[:, 0], np.arange(len(idx)))
    return idx[:, 1 : maxk + 1]


def same_partition(a, b):
    """a and b are the same labelling up to a one-to-one renaming of the labels."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def check_against_reference(got, prefix, skip_labels=()):
    want = REF[f"{prefix}/labels"]
    keep = np.ones(len(want), bool)
    keep[list(skip_labels)] = False
    assert np.array_equal(got.labels[keep], want[keep]), np.flatnonzero(got.labels != want)
    assert same_partition(got.labels[keep], want[keep])
    assert np.array_equal(got.labels[keep] == dp.HALO, want[keep] == -1)  # halo flags
    assert got.n_clusters == len(REF[f"{prefix}/centres"])
    assert np.array_equal(got.centres, REF[f"{prefix}/centres"])
    assert np.array_equal(got.border_points, REF[f"{prefix}/bord_indices"])
    np.testing.assert_allclose(got.log_den_bord, REF[f"{prefix}/log_den_bord"], rtol=1e-12)
    np.testing.assert_allclose(got.log_den_bord_err, REF[f"{prefix}/log_den_bord_err"], rtol=1e-12)
    assert got.labels.dtype == np.int32 and got.centres.dtype == np.int32


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("case", CASES)
def test_host_clustering_equals_dadapy(case, run):
    """DADApy's densities and lists in, DADApy's clustering out: labels, clusters,
    centres, populations, halo flags, saddles."""
    got = dp.adp_from_density(*densities(case), lists(case), **options(run))
    check_against_reference(got, f"{case}/{run}")
    assert np.array_equal(got.populations, REF[f"{case}/{run}/populations"])
    assert REF[f"{case}/{run}/unassigned"].size == 0


def test_reference_clusterings_are_not_trivial():
    """The fixture exercises merging (fewer clusters at Z = 3), halos and dropped
    putative centres."""
    for case in CASES:
        n1, n3 = (len(REF[f"{case}/{r}/centres"]) for r in ("z1.65", "z3.0"))
        assert n1 >= 3 and 2 <= n3 < n1, case
        assert np.sum(REF[f"{case}/z1.65_halo/labels"] == -1) > 0, case
    _, info = dp._adp(*densities("curved"), lists("curved"), 1.65, False)
    assert info["dropped"] > 0


def test_lookup_of_dropped_centres():
    """``curved_k6`` (6 neighbours): two dropped centres reach DADApy's lookup table.
    One lookup is defined and matches DADApy (through the table's shifted pointers); the
    other lands on an unassigned point, where DADApy's label is uninitialised memory:
    there the point joins the cluster of the densest point holding it, and the rest of
    the clustering (borders, merging) is DADApy's."""
    log_den, err, kstar = densities("curved_k6")
    nb = lists("curved_k6", 6)
    got, info = dp._adp(log_den, err, kstar.astype(np.int64), nb, 1.65, False)
    assert info["looked_up"] == 2 and info["undefined"] == 1
    odd = REF["curved_k6/z1.65/unassigned"]
    assert len(odd) == 1 and 0 <= got.labels[odd[0]] < got.n_clusters
    check_against_reference(got, "curved_k6/z1.65", skip_labels=odd)
    pops = REF["curved_k6/z1.65/populations"].copy()
    pops[got.labels[odd[0]]] += 1  # DADApy leaves that point out of every cluster
    assert np.array_equal(got.populations, pops)
    public = dp.adp_from_density(log_den, err, kstar, nb)
    assert np.array_equal(public.labels, got.labels)


@pytest.mark.parametrize("case", CASES)
def test_scores_of_the_reference_clusterings(case):
    """ARI / AMI of DADApy's labels against the generating components (scikit-learn on
    the non-halo points; the functions leave halo points out themselves)."""
    truth = REF[f"{case}/truth"]
    for run in RUNS:
        labels = REF[f"{case}/{run}/labels"]
        ari = dp.adjusted_rand_index(labels, truth)
        ami = dp.adjusted_mutual_information(labels, truth)
        assert abs(ari - REF[f"{case}/{run}/ari"]) <= SCORE_TOL, (run, ari)
        assert abs(ami - REF[f"{case}/{run}/ami"]) <= SCORE_TOL, (run, ami)


@pytest.mark.parametrize("name", SCORES)
def test_scores_against_sklearn(name):
    a, b = REF[f"scores/{name}/a"], REF[f"scores/{name}/b"]
    assert abs(dp.adjusted_rand_index(a, b) - REF[f"scores/{name}/ari"]) <= SCORE_TOL
    assert abs(dp.adjusted_mutual_information(a, b) - REF[f"scores/{name}/ami"]) <= SCORE_TOL


def test_scores_leave_out_negative_labels():
    a, b = REF["scores/random/a"].copy(), REF["scores/random/b"].copy()
    want = (dp.adjusted_rand_index(a[50:], b[50:]), dp.adjusted_mutual_information(a[50:], b[50:]))
    a[:30] = dp.HALO
    b[30:50] = -1
    assert dp.adjusted_rand_index(a, b) == want[0]
    assert dp.adjusted_mutual_information(a, b) == want[1]


@pytest.mark.parametrize("case", CASES)
def test_jax_route_equals_dadapy_lists(case):
    """The neighbour lists found in JAX (float32) give DADApy's clustering."""
    x = REF[f"{case}/x"]
    for run in ("z1.65_halo", "z3.0"):
        got = dp.adp_clusters_from_density(x, *densities(case), **options(run))
        check_against_reference(got, f"{case}/{run}")
        assert np.array_equal(got.populations, REF[f"{case}/{run}/populations"])


def test_masked_and_batched():
    """Garbage rows (mask False, NaN densities, k* 0) inserted at random places: they are
    labelled INVALID, never neighbours, and the clustering of the valid rows is DADApy's
    (indices mapped back to the padded cloud). Two clouds in one call, padded
    differently."""
    x = REF["curved/x"]
    log_den, err, kstar = densities("curved")
    n, extra = len(x), 40
    rng = np.random.default_rng(0)
    clouds, masks, fields = [], [], []
    for where in (np.sort(rng.choice(n + extra, extra, replace=False)), np.arange(n, n + extra)):
        mask = np.ones(n + extra, bool)
        mask[where] = False
        xp = np.asarray(1e3 * rng.standard_normal((n + extra, x.shape[1])), np.float32)
        xp[mask] = x
        f = [np.full(n + extra, np.nan), np.full(n + extra, np.nan), np.zeros(n + extra, np.int32)]
        for arr, src in zip(f, (log_den, err, kstar)):
            arr[mask] = src
        clouds.append(xp)
        masks.append(mask)
        fields.append(f)
    stacked = [np.stack([f[i] for f in fields]) for i in range(3)]
    got = dp.adp_clusters_from_density(np.stack(clouds), *stacked, np.stack(masks), Z=1.65)
    assert len(got) == 2
    for result, mask in zip(got, masks):
        rows = np.flatnonzero(mask)
        assert np.all(result.labels[~mask] == dp.INVALID)
        assert np.array_equal(result.labels[mask], REF["curved/z1.65/labels"])
        assert np.array_equal(result.centres, rows[REF["curved/z1.65/centres"]])
        bord = REF["curved/z1.65/bord_indices"]
        assert np.array_equal(result.border_points, np.where(bord >= 0, rows[bord], -1))
        assert np.array_equal(result.populations, REF["curved/z1.65/populations"])


# -- bad input: a ValueError naming the argument, before any compute ---------------------


def host_args():
    return (*densities("ties"), lists("ties"))


@pytest.mark.parametrize("z", [0, -1.0, float("nan"), True, "1.65"])
def test_bad_z(z):
    with pytest.raises(ValueError, match=r"^Z must be a finite number > 0"):
        dp.adp_from_density(*host_args(), Z=z)


def test_bad_z_jax_route():
    with pytest.raises(ValueError, match=r"^Z must"):
        dp.adp_clusters_from_density(REF["ties/x"], *densities("ties"), Z=0.0)


def test_bad_halo():
    with pytest.raises(ValueError, match=r"^halo must be True or False"):
        dp.adp_from_density(*host_args(), halo="yes")


def test_bad_maxk():
    with pytest.raises(ValueError, match=r"^maxk must be an integer >= 1"):
        dp.adp_clusters_from_density(REF["ties/x"], *densities("ties"), maxk=0)


def test_kstar_beyond_the_lists():
    log_den, err, kstar, nb = host_args()
    with pytest.raises(ValueError, match=r"^kstar must lie in \[1, 20\]"):
        dp.adp_from_density(log_den, err, kstar, nb[:, :20])


def test_kstar_not_integer():
    log_den, err, kstar, nb = host_args()
    with pytest.raises(ValueError, match=r"^kstar must be an integer array"):
        dp.adp_from_density(log_den, err, kstar.astype(float), nb)


def test_log_density_shape():
    log_den, err, kstar, nb = host_args()
    with pytest.raises(ValueError, match=r"^log_density must have shape \(400,\)"):
        dp.adp_from_density(log_den[:-1], err, kstar, nb)


def test_log_density_shape_jax_route():
    log_den, err, kstar = densities("ties")
    with pytest.raises(ValueError, match=r"^log_density_err must have shape \(400,\)"):
        dp.adp_clusters_from_density(REF["ties/x"], log_den, err[None], kstar)


def test_log_density_not_finite():
    log_den, err, kstar, nb = host_args()
    log_den = log_den.copy()
    log_den[3] = np.nan
    with pytest.raises(ValueError, match=r"^log_density has non-finite values"):
        dp.adp_from_density(log_den, err, kstar, nb)


def test_log_density_err_negative():
    log_den, err, kstar, nb = host_args()
    with pytest.raises(ValueError, match=r"^log_density_err must be finite and >= 0"):
        dp.adp_from_density(log_den, -err, kstar, nb)


def test_neighbours_hold_the_point_itself():
    log_den, err, kstar, _ = host_args()
    idx = REF["ties/dist_indices"].astype(np.int64)[:, :-1]  # self in the first column
    with pytest.raises(ValueError, match=r"^neighbours must hold point indices in \[0, 400\)"):
        dp.adp_from_density(log_den, err, kstar, idx)


def test_neighbours_rank():
    log_den, err, kstar, nb = host_args()
    with pytest.raises(ValueError, match=r"^neighbours must be an integer array \[N, M\]"):
        dp.adp_from_density(log_den, err, kstar, nb[:, 0])


def test_truth_with_one_class():
    with pytest.raises(ValueError, match=r"^truth must hold at least two classes"):
        dp.adjusted_rand_index([0, 1, 1, 2], [3, 3, 3, 3])


def test_truth_with_one_class_after_leaving_out_halo():
    with pytest.raises(ValueError, match=r"^truth must hold at least two classes"):
        dp.adjusted_mutual_information([-1, 1, 1, 2], [0, 3, 3, 3])


def test_scores_lengths_differ():
    with pytest.raises(ValueError, match=r"^labels and truth must have the same length"):
        dp.adjusted_rand_index([0, 1, 1], [0, 1, 1, 0])


def test_scores_labels_not_integer():
    with pytest.raises(ValueError, match=r"^labels must be a 1-d integer array"):
        dp.adjusted_mutual_information([0.0, 1.0, 1.0], [0, 1, 1])


def test_scores_nothing_kept():
    with pytest.raises(ValueError, match=r"^labels: no point has a label >= 0"):
        dp.adjusted_rand_index([-1, -1, 0], [0, 1, -1])


@pytest.mark.parametrize("name", ["mixture", "curved"])
def test_adp_clusters_with_its_own_pak_density_equals_dadapy(name):
    """The whole route (geom_jax's PAk density and k*, its neighbour lists, ADP) at
    DADApy's defaults and the fixture's TwoNN dimension: DADApy's labels and centres
    (the densities agree to ~1e-6 relative, far inside the fixtures' g gaps)."""
    with np.load(FIXTURE) as f:
        x, dim = f[f"{name}/x"], float(f[f"{name}/intrinsic_dim"])
        labels, centres = f[f"{name}/z1.65/labels"], f[f"{name}/z1.65/centres"]
    got = metrics.adp_clusters(x, intrinsic_dim=dim)
    np.testing.assert_array_equal(got.labels, labels)
    np.testing.assert_array_equal(got.centres, centres)
