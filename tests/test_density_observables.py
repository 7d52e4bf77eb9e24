"""The observables density, adp and adp_agreement against DADApy 0.3.4 and scikit-learn
(tests/fixtures/density_reference.npz and adp_reference.npz), on both neighbour paths
and on 8 simulated devices.

One batch holds the six fixture clouds as prompts of one layer, padded to 600 points
(mask) and 20 dimensions (zero coordinates, which change no distance): the density
fixture's mixture, curved and ties clouds, then the ADP fixture's. The dense path runs
here with adp_halo=True; the row-blocked path (block_rows=64: 10 row blocks) runs in one
subprocess with adp_halo=False on four of the clouds, on one device and on 8 simulated
ones.

Tolerances are test_density.py's, for the same reasons (float32 distances): k-NN and
PAk log densities 1e-5 relative, errors 1e-6, k* exact (the fixtures' smallest margin
to the threshold is 3.6e-4 > KSTAR_MARGIN). The dimension is the run's own TwoNN, which
equals DADApy's compute_id_2NN within 1e-5 (on ``ties``, with its twins, the reference
is DADApy on the unique rows). ADP labels are compared exactly: the densities agree to
~1e-6, far inside the fixtures' gaps in g, and clusters are numbered as DADApy numbers
them. ARI / AMI: 1e-6 (float32 fields; test_adp.py checks the float64 functions to
1e-12). Dense against blocked, and 8 devices against one: labels, k* and counts equal;
k-NN densities, errors and dimensions within 1e-6 relative (the same exact float32
lists; measured: equal). PAk log densities (and their mean and spread) within 1e-4:
its Newton steps stop at a threshold of the relative gradient (DADApy's rule, or
float32's floor), and two programs (other batches, a sharded program, fused
differently by XLA) can round a step's float32 arithmetic differently by an ulp, which
moves the last step of the points that stop right at the threshold: one damped step,
at a few points per cloud, 1.6e-5 relative at most here (measured).
"""

import os

import numpy as np
import pytest
from helpers import subprocess_env
from test_density import ERR_REL, KNN_REL, KSTAR_MARGIN, PAK_REL, assert_close

from geom_jax import metrics
from geom_jax.metrics.measures import density_peaks

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(HERE, "fixtures")
DENSITY = dict(np.load(os.path.join(FIXTURES, "density_reference.npz")))
ADP = dict(np.load(os.path.join(FIXTURES, "adp_reference.npz")))
CLOUDS = (
    ("density", "mixture"),
    ("density", "curved"),
    ("density", "ties"),
    ("adp", "mixture"),
    ("adp", "curved"),
    ("adp", "ties"),
)
"""The batch's clouds (fixture, case), one prompt each."""
BLOCKED = (2, 3, 5)
"""The clouds of the row-blocked runs: the density fixture's ties (exact duplicates: a
second, distinct-point selection pass; NaN PAk, not clustered), the ADP fixture's
mixture (six clusters) and ties (ties broken by index). The density fixture's mixture
(whose slowest point takes 2,641 Newton steps) and the curved clouds are left to the
dense run: 8 simulated devices each repeat the layer's PAk and clustering."""
ALL = tuple(range(len(CLOUDS)))
N, D = 600, 20
SCORE_TOL = 1e-6
PATH_REL = 1e-6
PAK_PATH_REL = 1e-4
PAK_FIELDS = ("pak_log_density", "pak_log_density_mean", "pak_log_density_std")


def clouds(ids=ALL):
    """(hidden [C, 1, N, D], mask [C, N], labels [C, N]) of the clouds ``ids``; labels
    are the generating components where the fixture has them (-1 elsewhere and on
    padding)."""
    hidden = np.zeros((len(ids), 1, N, D), np.float32)
    mask = np.zeros((len(ids), N), bool)
    labels = np.full((len(ids), N), -1, np.int32)
    for row, i in enumerate(ids):
        fixture, case = CLOUDS[i]
        x = (DENSITY if fixture == "density" else ADP)[f"{case}/x"]
        truth = DENSITY.get(f"{case}/labels") if fixture == "density" else ADP[f"{case}/truth"]
        n, d = x.shape
        hidden[row, 0, :n, :d] = x
        mask[row, :n] = True
        if truth is not None:
            labels[row, :n] = truth
    return hidden, mask, labels


def geometry(ids=ALL, mesh=None, **options):
    """Every field of the three observables for the clouds ``ids``, [C, ...]."""
    hidden, mask, labels = clouds(ids)
    geo = metrics.layer_geometry(
        hidden,
        mask,
        observables="density,adp,adp_agreement",
        inputs={"labels": labels},
        mesh=mesh,
        **options,
    )
    return {k: np.asarray(v)[:, 0] for k, v in geo.items()}


def check_density_cloud(geo, row, case):
    """A density fixture cloud against DADApy (k-NN with the TwoNN dimension; PAk where
    the reference used the TwoNN dimension: not on ``ties``)."""
    n = len(DENSITY[f"{case}/x"])
    want_id = DENSITY["ties/twonn" if case == "ties" else f"{case}/id"]
    assert abs(geo["density_id"][row] / want_id - 1) <= 1e-5, (case, geo["density_id"][row])
    knn = DENSITY["ties/knn_k16_twonn" if case == "ties" else f"{case}/knn_k16"]
    assert_close(geo["knn_log_density"][row, :n], knn, KNN_REL, f"{case} k-NN")
    assert np.all(np.isnan(geo["knn_log_density"][row, n:]))
    assert np.all(geo["pak_kstar"][row, n:] == -1)
    if case == "ties":  # PAk is NaN at the 100 points with a twin, as in DADApy...
        assert np.isnan(geo["pak_log_density"][row, :n]).sum() == 100
        # ... which leaves the cloud unclustered
        assert geo["adp_clusters"][row] == 0 and np.isnan(geo["adp_ari"][row])
        assert np.all(geo["adp_labels"][row] == density_peaks.INVALID)
        return
    kstar, margin = geo["pak_kstar"][row, :n], DENSITY[f"{case}/pak_margin"]
    differ = kstar != DENSITY[f"{case}/pak_kstar"]
    assert not np.any(differ & (margin >= KSTAR_MARGIN)), np.flatnonzero(differ)
    for field, key, tol in (
        ("pak_log_density", "pak", PAK_REL),
        ("pak_log_density_err", "pak_err", ERR_REL),
    ):
        got = np.where(differ, np.nan, geo[field][row, :n])
        want = np.where(differ, np.nan, DENSITY[f"{case}/{key}"])
        assert_close(got, want, tol, f"{case} {field}")
    pak = DENSITY[f"{case}/pak"]
    assert abs(geo["pak_log_density_mean"][row] - pak.mean()) <= 1e-5 * abs(pak.mean())
    assert abs(geo["pak_log_density_std"][row] - pak.std()) <= 1e-4 * pak.std()
    assert geo["pak_kstar_median"][row] == np.median(DENSITY[f"{case}/pak_kstar"])
    # mixture has labels (finite ARI), curved none (NaN)
    assert np.isfinite(geo["adp_ari"][row]) == (case == "mixture")


def check_adp_cloud(geo, row, case, run):
    """An ADP fixture cloud against DADApy: its PAk densities and k* (with DADApy's
    TwoNN dimension), the clustering ``run`` and its ARI / AMI."""
    n = len(ADP[f"{case}/x"])
    assert abs(geo["density_id"][row] / ADP[f"{case}/intrinsic_dim"] - 1) <= 1e-5
    np.testing.assert_array_equal(geo["pak_kstar"][row, :n], ADP[f"{case}/kstar"])
    assert_close(geo["pak_log_density"][row, :n], ADP[f"{case}/log_den"], PAK_REL, case)
    assert_close(geo["pak_log_density_err"][row, :n], ADP[f"{case}/log_den_err"], ERR_REL, case)
    labels = geo["adp_labels"][row]
    np.testing.assert_array_equal(labels[:n], ADP[f"{case}/{run}/labels"], err_msg=case)
    assert np.all(labels[n:] == density_peaks.INVALID)
    pops = np.sort(ADP[f"{case}/{run}/populations"])[::-1]
    assert geo["adp_clusters"][row] == len(pops)
    np.testing.assert_array_equal(geo["adp_populations"][row, : len(pops)], pops)
    assert np.all(geo["adp_populations"][row, len(pops) :] == 0)
    assert np.isclose(geo["adp_largest_fraction"][row], pops[0] / n)
    core = np.mean(ADP[f"{case}/z1.65_halo/labels"] >= 0)  # with or without halo labels
    assert 0 < core < 1 and np.isclose(geo["adp_core_fraction"][row], core), case
    assert abs(geo["adp_ari"][row] - ADP[f"{case}/{run}/ari"]) <= SCORE_TOL, case
    assert abs(geo["adp_ami"][row] - ADP[f"{case}/{run}/ami"]) <= SCORE_TOL, case


def check(geo, ids, run):
    for row, i in enumerate(ids):
        fixture, case = CLOUDS[i]
        if fixture == "density":
            check_density_cloud(geo, row, case)
        else:
            check_adp_cloud(geo, row, case, run)


@pytest.fixture(scope="module")
def dense():
    """The dense path with adp_halo, and the number of host clusterings it ran."""
    calls = []
    original = density_peaks._adp
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(density_peaks, "_adp", lambda *a: calls.append(1) or original(*a))
        geo = geometry(neighbour_path="dense", adp_halo=True)
    return geo, len(calls)


def test_dense_path_against_dadapy(dense):
    """Densities, k*, the run's TwoNN, ADP with halo (labels, clusters, sorted
    populations, core fraction) and ARI / AMI equal the references."""
    check(dense[0], ALL, "z1.65_halo")


def test_clustering_is_shared(dense):
    """adp and adp_agreement read one clustering per layer chunk: the host clustering
    ran once per clustered cloud (all but the density fixture's ties) with both asked."""
    geo, calls = dense
    assert calls == int(np.sum(geo["adp_clusters"] > 0)) == len(CLOUDS) - 1


SCRIPT = r"""
import sys
import jax, numpy as np
from geom_jax import sharding
from test_density_observables import BLOCKED, geometry
assert jax.device_count() == 8
kw = dict(neighbour_path="blocked", block_rows=64, adp_halo=False)
one = geometry(BLOCKED, **kw)
many = geometry(BLOCKED, mesh=sharding.make_mesh((8, 1)), **kw)
np.savez(sys.argv[1], **{"one/" + k: v for k, v in one.items()},
         **{"many/" + k: v for k, v in many.items()})
"""


@pytest.fixture(scope="module")
def blocked(tmp_path_factory):
    """The blocked path (block_rows=64: 10 row blocks, no halo labels) on one device and
    on 8 simulated devices, for the clouds BLOCKED (one subprocess)."""
    out = str(tmp_path_factory.mktemp("blocked") / "geo.npz")
    subprocess_env.run_on_simulated_devices(SCRIPT, out, pythonpath=os.pathsep.join([ROOT, HERE]))
    with np.load(out) as f:
        return {
            w: {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith(w + "/")}
            for w in ("one", "many")
        }


def test_blocked_path_against_dadapy_and_dense(blocked, dense):
    """Row-blocked without halo labels: DADApy's densities and clusters, and the dense
    path's fields (its labels outside the halo, its k*, counts and populations; its
    densities within float32's summation order)."""
    one, geo = blocked["one"], {k: v[list(BLOCKED)] for k, v in dense[0].items()}
    check(one, BLOCKED, "z1.65")
    core = geo["adp_labels"] >= 0
    np.testing.assert_array_equal(one["adp_labels"][core], geo["adp_labels"][core])
    assert np.all(one["adp_labels"][geo["adp_labels"] == density_peaks.HALO] >= 0)
    for field in ("pak_kstar", "adp_clusters", "adp_populations", "adp_core_fraction"):
        np.testing.assert_array_equal(one[field], geo[field], err_msg=field)
    for field in ("knn_log_density", "pak_log_density_err", "density_id"):
        np.testing.assert_allclose(one[field], geo[field], rtol=PATH_REL, err_msg=field)
    for field in PAK_FIELDS:
        np.testing.assert_allclose(one[field], geo[field], rtol=PAK_PATH_REL, err_msg=field)


def test_eight_devices_equal_one_device(blocked):
    """The blocked path's rows split over 8 simulated devices, the clustering called
    back from the sharded program: every field equals one device's (PAk's within one
    Newton step, its summaries within their summation order)."""
    one, many = blocked["one"], blocked["many"]
    assert set(one) == set(many)
    for field in one:
        if field in PAK_FIELDS:
            np.testing.assert_allclose(many[field], one[field], rtol=PAK_PATH_REL, err_msg=field)
        else:
            np.testing.assert_array_equal(many[field], one[field], err_msg=field)


def small(n=12):
    return np.random.default_rng(0).standard_normal((1, n, 4)).astype(np.float32)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"adp_z": 0.0}, r"^adp_z must be a finite number > 0, got 0\.0$"),
        ({"adp_z": -1.0}, r"^adp_z must be a finite number > 0"),
        ({"density_k": 0}, r"^density_k must be an integer >= 1, got 0$"),
        ({"pak_alpha": 1.0}, r"^pak_alpha must be a number in \(0, 1\), got 1\.0$"),
        ({"pak_alpha": 0.0}, r"^pak_alpha must be a number in \(0, 1\)"),
        ({"density_k": 16}, r"^density_k=16 needs N >= 17 points per cloud, got N = 12$"),
        ({"adp_density": "kde"}, r"^adp_density must be one of \('pak', 'knn'\)"),
    ],
)
def test_bad_options(options, match):
    """Each bad option gets its one-line error, naming it, before any compute."""
    with pytest.raises(ValueError, match=match) as info:
        metrics.layer_geometry(small(), observables="adp", **options)
    assert "\n" not in str(info.value)


def test_too_few_valid_points():
    """A mask leaving fewer than density_k + 1 valid points is refused before compute."""
    mask = np.ones(12, bool)
    mask[5:] = False
    with pytest.raises(ValueError, match=r"^mask: density_k=5 .*needs >= 6 valid points"):
        metrics.layer_geometry(small(), mask, observables="density", density_k=5)


def test_agreement_refuses_labels_of_one_class():
    """adp_agreement against labels with one class among the labelled valid points (the
    others unlabelled, -1) is refused before compute, naming the labels and the cloud."""
    labels = np.full((1, 12), -1)
    labels[0, :6] = 3
    with pytest.raises(ValueError, match=r"^labels must have at least 2 classes .*\(0,\) has 1$"):
        metrics.layer_geometry(
            small(), observables="adp_agreement", density_k=5, inputs={"labels": labels}
        )


def test_small_cloud_in_input_units():
    """A cloud of 12 points (pak_max_k resolves to N - 1 = 11: the lists hold every other
    point) far from unit scale (the engine divides it by 2**20 and the observable puts
    the input's units back): the public functions' values on the raw cloud."""
    x = small()[0] * 3e6
    geo = metrics.layer_geometry(x[None], observables="density", density_k=5)
    dim = float(np.asarray(geo["density_id"])[0])
    knn, _ = metrics.knn_density(x, k=5, intrinsic_dim=dim)
    pak, _ = metrics.pak_density(x, intrinsic_dim=dim)
    np.testing.assert_allclose(geo["knn_log_density"][0], knn, rtol=1e-6)
    np.testing.assert_allclose(geo["pak_log_density"][0], pak, rtol=1e-5)
    np.testing.assert_array_equal(geo["pak_kstar"][0], metrics.pak_kstar(x, intrinsic_dim=dim))


def test_report_sections_state_the_numbers(tmp_path):
    """The density and cluster sections' texts state each layer's numbers (means over a
    level's rows) and the ARI peak; their figures are drawn."""
    from geom_jax.metrics.measures.sections import density as sections
    from geom_jax.plotting import Run

    ones = np.ones((2, 3))
    arrays = {
        "shuffle_index": np.array([0, 0]),
        "prompt_index": np.array([0, 1]),
        "pak_log_density_mean": ones * [[-10.0, -12.5, -11.0]],
        "pak_log_density_std": ones * 0.5,
        "pak_kstar_median": np.array([[7.0, 9.0, 11.0], [9.0, 9.0, 11.0]]),
        "adp_clusters": np.array([[2, 5, 3], [4, 5, 3]]),
        "adp_core_fraction": ones * 0.75,
        "adp_ari": ones * [[0.1, 0.6, 0.3]],
    }
    run = Run("toy", arrays, "pooled")
    density_text = "\n".join(sections.density_text(run))
    assert "| structured (s=0): mean log density | -10.00 | -12.50 | -11.00 |" in density_text
    assert "| structured (s=0): median k* | 8.0 | 9.0 | 11.0 |" in density_text
    clusters = "\n".join(sections.clusters_text(run))
    assert "| structured (s=0): clusters | 3.0 | 5.0 | 3.0 |" in clusters
    assert "| structured (s=0): core fraction | 0.750 | 0.750 | 0.750 |" in clusters
    assert "Highest ARI (structured): 0.600 at layer 2." in clusters
    for plot in (sections.plot_density, sections.plot_clusters):
        path = plot([run], str(tmp_path / f"{plot.__name__}.png"))
        assert open(path, "rb").read(4) == b"\x89PNG"
