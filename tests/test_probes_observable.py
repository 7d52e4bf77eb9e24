"""The ``probes`` observable (issue 29 item 4): per layer, what ``linear_probe`` gives
(the same kernel, the same stratified folds, derived on the host from the concrete
labels through ``Observable.host_inputs``), on both neighbour paths, cloud by cloud in a
batch of clouds with different classes, against scikit-learn's RidgeClassifier on the
same folds; the host-input mechanism's refusal of traced inputs; bad options.

The clouds are scaled by 37 (the engine measures them at a power-of-two scale, 2**-8 here):
the penalty must follow the scale for the fits to be the input's (alpha 8 matters on
these points: alpha 8 * 4**8 on the rescaled cloud would change the accuracies)."""

import dataclasses

import jax
import numpy as np
import pytest
from helpers import run_helpers
from test_probes import make_data, ridge, sklearn_counts

from geom_jax import metrics, plotting
from geom_jax import run as geom_run
from geom_jax.metrics import compute
from geom_jax.metrics.declare import registry
from geom_jax.metrics.measures.sections import probes as sections
from geom_jax.run.kinds import pooled_rows, pooled_sweep

SCALE = 37.0
ALPHA = 8.0


def stack():
    """[2, 120, 10] (two layers, four overlapping classes) and labels [120]."""
    x, y = make_data("overlapping")
    return x * np.float32(SCALE), y


@pytest.mark.parametrize("path", ["dense", "blocked"])
def test_equals_linear_probe_per_layer(path):
    """Equal, bit for bit, to linear_probe of each layer (ridge, alpha 8, 4 folds, seed 3;
    block_rows 32 so that the blocked path tiles the 120 rows)."""
    x, y = stack()
    kw = dict(probe_folds=4, probe_seed=3, probe_alpha=ALPHA)
    geo = metrics.layer_geometry(
        x, observables="probes", inputs={"labels": y}, neighbour_path=path, block_rows=32, **kw
    )
    mean, std = metrics.linear_probe(x, y, folds=4, seed=3, alpha=ALPHA)
    assert geo.probe_accuracy.shape == geo.probe_accuracy_std.shape == (2,)
    np.testing.assert_array_equal(geo.probe_accuracy, mean)
    np.testing.assert_array_equal(geo.probe_accuracy_std, std)
    assert 0.3 < float(mean[0]) < 0.95  # neither chance nor perfect: a fit that can differ


def test_logistic_equals_linear_probe():
    """probe_kind logistic, C 0.5, points scaled by 37: equal to linear_probe (with C not
    carried to the engine's scale: 0.747 against 0.696 at layer 1)."""
    x, y = make_data("binary")
    x = x[:, :40] * np.float32(SCALE)
    y = y[:40]
    geo = metrics.layer_geometry(
        x,
        observables="probes",
        inputs={"labels": y},
        probe_kind="logistic",
        probe_folds=3,
        probe_C=0.5,
    )
    mean, std = metrics.linear_probe(x, y, kind="logistic", folds=3, C=0.5)
    np.testing.assert_array_equal(geo.probe_accuracy, mean)
    np.testing.assert_array_equal(geo.probe_accuracy_std, std)


def test_each_cloud_of_a_mixed_batch_gets_its_own_probe():
    """Prompts [3, 2, 120, 10] in one call: four classes; three classes (values 0, 1, 3 of
    the batch's 0..3: one absent) with 20 rows masked; two classes with 30 unlabelled
    rows (-1). Each cloud equals linear_probe of that cloud alone, its valid labelled
    rows (so the one-hot width of 4 shared by the batch changes nothing)."""
    x, y = stack()
    rng = np.random.default_rng(5)
    enc = np.unique(y, return_inverse=True)[1]
    labels = np.stack([enc, np.where(enc == 2, 3, enc), np.where(enc >= 2, 1, 0)])
    mask = np.ones((3, 120), bool)
    mask[1, rng.choice(120, 20, replace=False)] = False
    labels[2, rng.choice(120, 30, replace=False)] = -1
    hidden = np.stack([x, x[::-1], x + np.float32(3.0)])
    kw = dict(probe_folds=3, probe_seed=1, probe_alpha=ALPHA)
    geo = metrics.layer_geometry(
        hidden, mask, observables="probes", inputs={"labels": labels}, **kw
    )
    assert geo.probe_accuracy.shape == (3, 2)
    for p in range(3):
        keep = mask[p] & (labels[p] >= 0)
        mean, std = metrics.linear_probe(hidden[p], labels[p], keep, folds=3, seed=1, alpha=ALPHA)
        np.testing.assert_array_equal(geo.probe_accuracy[p], mean, err_msg=f"cloud {p}")
        np.testing.assert_array_equal(geo.probe_accuracy_std[p], std, err_msg=f"cloud {p}")
    assert len(set(np.asarray(geo.probe_accuracy[:, 0]).tolist())) == 3


def test_equals_sklearn_ridge_on_the_same_folds():
    """Within one held-out row per fold of RidgeClassifier (float64) on StratifiedKFold's
    folds (measured: equal)."""
    x, y = stack()
    geo = metrics.layer_geometry(x, observables="probes", inputs={"labels": y})
    for layer in range(2):
        correct, tested, _ = sklearn_counts(x[layer], y, ridge)
        want = correct / tested
        slack = np.mean(1.0 / tested) + 1e-6
        assert abs(float(geo.probe_accuracy[layer]) - want.mean()) <= slack, layer
        assert abs(float(geo.probe_accuracy_std[layer]) - want.std()) <= 2 * slack, layer


def test_host_inputs_refuse_traced_inputs_and_take_given_ones():
    """Under an outer jit the labels are traced: refused, naming the observable. Derived
    first with compute.host_inputs and passed in inputs, the jitted call equals the
    plain one."""
    x, y = stack()
    assert {"probe_classes", "probe_fold"} <= set(registry.INPUTS)

    @jax.jit
    def traced(h, labels):
        return metrics.layer_geometry(h, observables="probes", inputs={"labels": labels})

    with pytest.raises(ValueError, match=r"^observable 'probes' derives its inputs .* traced"):
        traced(x, y)
    opts = registry.resolve("probes").options({})
    given = compute.host_inputs("probes", {"labels": y[None]}, None, opts, y.shape[-1])
    assert given["probe_classes"].shape == (1, 120, 4) and given["probe_fold"].shape == (1, 120)
    jitted = jax.jit(lambda h, i: metrics.layer_geometry(h[None], observables="probes", inputs=i))(
        x, {k: v for k, v in given.items()}
    )
    plain = metrics.layer_geometry(x, observables="probes", inputs={"labels": y})
    np.testing.assert_array_equal(jitted.probe_accuracy[0], plain.probe_accuracy)


BAD = {
    "probe_kind": dict(probe_kind="svm"),
    "probe_folds": dict(probe_folds=1),
    "probe_seed": dict(probe_seed=-1),
    "probe_alpha": dict(probe_alpha=-1.0),
    "probe_C": dict(probe_C=0.0),
    "probe_max_iter": dict(probe_max_iter=0),
    "probe_tol": dict(probe_tol=0.0),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_option(name):
    x, y = stack()
    with pytest.raises(ValueError, match=rf"^{name}\b") as e:
        metrics.layer_geometry(x, observables="probes", inputs={"labels": y}, **BAD[name])
    assert "\n" not in str(e.value)


def test_one_class():
    x, y = stack()
    with pytest.raises(ValueError, match=r"^labels .*2 classes.*cloud \(0,\) has 1$"):
        metrics.layer_geometry(x, observables="probes", inputs={"labels": np.full(120, 4)})


def test_a_class_with_fewer_rows_than_folds_is_left_out():
    """A class of 3 rows with 5 folds: its rows are unlabelled for the probe (the others'
    folds and fits are those of linear_probe on the rest), probe_classes counts the kept
    classes; a cloud left with one class is refused."""
    x, y = stack()
    y = np.where(y == 13, 7, y)
    y[[3, 40, 77]] = 13
    geo = metrics.layer_geometry(x, observables="probes", inputs={"labels": y})
    keep = y != 13
    mean, _ = metrics.linear_probe(x[:, keep], y[keep])
    np.testing.assert_array_equal(geo.probe_accuracy, mean)
    n_classes = len(np.unique(y[keep]))
    np.testing.assert_array_equal(geo.probe_classes, [n_classes, n_classes])
    few = np.full(120, 7)
    few[:3] = 13
    with pytest.raises(ValueError, match=r"^labels must have at least 2 classes of >= "):
        metrics.layer_geometry(x, observables="probes", inputs={"labels": few})


def test_labels_are_required():
    x, _ = stack()
    with pytest.raises(ValueError, match=r"observable 'probes' consumes 'labels'"):
        metrics.layer_geometry(x, observables="probes")


# -- pooled runs and the report -------------------------------------------------------------


class Store:
    """Stands in for representations.zarr: points [rows, L+1, D]."""

    def __init__(self, points):
        self.points = points
        self.layers, self.dim = points.shape[1:]

    def read(self, rows):
        return self.points[rows]


def pooled(x, labels, sizes):
    """(Rows, clouds, store) of a pooled run whose rows are the points x [L, R, D] (an
    embedding layer of zeros first) with labels [R], cut into clouds of ``sizes`` rows."""
    r = x.shape[1]
    rows = pooled_rows.Rows(
        input_ids=np.zeros((r, 4), np.int32),
        attention_mask=np.ones((r, 4), np.int32),
        prompt_index=np.arange(r),
        prompt_key=np.array([f"d:w{i}" for i in range(r)]),
        shuffle=np.zeros(r, np.int32),
        repeat=np.zeros(r, np.int32),
        label=labels.astype(np.int32),
    )
    bounds = np.cumsum([0, *sizes])
    clouds = [
        pooled_rows.Cloud(0, 0, p, np.arange(bounds[p], bounds[p + 1])) for p in range(len(sizes))
    ]
    points = np.concatenate([np.zeros_like(x[:1]), x]).transpose(1, 0, 2)
    return rows, clouds, Store(points)


def test_pooled_clouds_get_their_probes(tmp_path):
    """A pooled run's measure (pooled_sweep.CloudGeometry, a stand-in store): clouds of 70 and
    50 rows (padded to 70), their host inputs made once for all clouds before the jitted
    geometry; each cloud's fields equal linear_probe of its own points."""
    x, y = stack()
    rows, clouds, store = pooled(x, y, (70, 50))
    spec = geom_run.RunSpec(
        output_dir=str(tmp_path),
        model="m",
        pool="last",
        observables="probes",
        probe_folds=3,
        probe_alpha=ALPHA,
    )
    assert pooled_rows.for_host_inputs(spec, rows, clouds) is spec
    written = {"probe_accuracy", "probe_accuracy_std"}
    got, _ = pooled_sweep.CloudGeometry.plan(spec, rows, clouds).measure(store, written, False)
    assert got["probe_accuracy"].shape == (2, 2)
    for c, cloud in enumerate(clouds):
        mean, std = metrics.linear_probe(x[:, cloud.rows], y[cloud.rows], folds=3, alpha=ALPHA)
        np.testing.assert_array_equal(got["probe_accuracy"][c], mean)
        np.testing.assert_array_equal(got["probe_accuracy_std"][c], std)


def test_pooled_runs_refuse_probes_their_labels_cannot_take(tmp_path):
    """probes is opt-in (not in the "pooled" set). Named, on a cloud left with one class
    of at least probe_folds rows, the run is refused before compute, naming --observables
    and the labels; on rows without labels it is refused naming the labelled rows it
    needs, while the default set's label readers are left out."""
    x, y = stack()
    y = np.full_like(y, 99)
    y[[0, 1, 2, 3]] = 5  # 4 rows < 5 folds: left out, one class remains
    rows, clouds, _ = pooled(x, y, (70, 50))
    implied = geom_run.RunSpec(output_dir=str(tmp_path), model="m", pool="last")
    assert "probes" not in implied.observable_set
    assert pooled_rows.for_host_inputs(implied, rows, clouds) is implied
    with run_helpers.raises_user_error(
        r"^--observables: probes cannot measure these clouds .*: --labels must have at least "
        r"2 classes of >= --probe_folds=5 valid rows in each cloud \(smaller classes are left "
        r"out\), cloud \(0,\) has 1$"
    ):
        pooled_rows.for_host_inputs(implied.replace(observables="gride,probes"), rows, clouds)
    unlabelled = dataclasses.replace(rows, label=None)
    kept = pooled_rows.for_labels(implied, unlabelled).observable_set
    assert "label_overlap" not in kept and "gride" in kept
    with run_helpers.raises_user_error(r"^--observables: probes need\(s\) labelled rows"):
        pooled_rows.for_labels(implied.replace(observables="gride,probes"), unlabelled)


def report_run(levels=(0, -1), partitions=2, layers=6, seed=0):
    """A loaded pooled run (plotting.Run) with probe accuracies peaking at layer 4 and
    GRIDE peaking at layer 3 at its largest finite scale (the last is NaN: too few
    points), TwoNN peaking at layer 5."""
    rng = np.random.default_rng(seed)
    n = len(levels) * partitions
    bump = lambda peak: np.exp(-0.5 * (np.arange(layers) - peak) ** 2)  # noqa: E731
    acc = 0.4 + 0.5 * bump(3) + 0.01 * rng.standard_normal((n, layers))
    gride = np.repeat((5 + 10 * bump(2))[None, :, None], 3, axis=2) * np.ones((n, 1, 1))
    gride[..., 0] += 10 * bump(4)  # scale 0 peaks elsewhere: the largest finite scale is read
    gride[..., 2] = np.nan
    return plotting.Run(
        label="model",
        kind="pooled",
        arrays={
            "shuffle_index": np.repeat(levels, partitions),
            "prompt_index": np.tile(np.arange(partitions), len(levels)),
            "probe_accuracy": acc.astype(np.float32),
            "probe_accuracy_std": np.full((n, layers), 0.02, np.float32),
            "gride_ids": gride.astype(np.float32),
            "twonn": np.tile(5 + bump(4), (n, 1)).astype(np.float32),
        },
    )


def test_report_section_states_the_peaks(tmp_path):
    run = report_run()
    lines = sections.text(run)
    acc = run.arrays["probe_accuracy"]
    mean = acc[run.rows(0)].mean(0)
    want = (
        f"- structured (s=0): accuracy peaks at layer 4 ({mean[3]:.3f}); the ID (GRIDE "
        "(n1=2)) peaks at layer 3."
    )
    assert want in lines, lines
    assert any(line.startswith("- permuted: accuracy peaks at layer 4") for line in lines)
    del run.arrays["gride_ids"]
    assert "the ID (TwoNN) peaks at layer 5" in "\n".join(sections.text(run))
    png = sections.plot([run, report_run(levels=(0,), seed=1)], str(tmp_path / "p.png"))
    assert open(png, "rb").read(4) == b"\x89PNG"
