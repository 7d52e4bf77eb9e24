"""Row blocks split over 8 simulated CPU devices give what one device gives."""

import os

import numpy as np
from helpers import subprocess_env, tolerances

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def data():
    """Clouds [3, 603, 12] and their mask [603] (590 valid)."""
    rng = np.random.default_rng(0)
    n, d = 603, 12  # not a multiple of 8: the last devices' row ranges overlap
    z = rng.standard_normal((n, 3))
    h = np.stack(
        [
            np.tanh(z @ rng.standard_normal((3, d))) + 0.05 * rng.standard_normal((n, d))
            for _ in range(3)
        ]
    ).astype(np.float32)
    h[1, 17] = h[1, 4]  # an exact duplicate: the second selection pass runs sharded too
    mask = np.ones(n, bool)
    mask[590:] = False
    return h, mask


SCRIPT = r"""
import json, sys
import jax, numpy as np
from geom_jax import metrics, sharding
from geom_jax.metrics.neighbours import blocked_rows
from test_metrics_blocked_sharded import data
assert jax.device_count() == 8 and blocked_rows.DATA_AXIS == sharding.DATA
h, mask = data()
# probes: its host inputs (folds from the labels) made before the sharded call
kw = dict(range_max=128, max_k=10, block_rows=32, observables="paper,probes",
          inputs={"labels": np.arange(603) % 3}, probe_folds=3)
one = metrics.layer_geometry(h, mask, neighbour_path="blocked", **kw)
report = {}
for shape in [(8, 1), (4, 2)]:
    mesh = sharding.make_mesh(shape)
    many = metrics.layer_geometry(h, mask, mesh=mesh, **kw)
    report[str(shape)] = {k: [np.asarray(one[k]).tolist(), np.asarray(many[k]).tolist()]
                          for k in one}
print("REPORT " + json.dumps(report))
"""


def test_eight_devices_equal_one_device():
    report = subprocess_env.report_on_simulated_devices(
        SCRIPT, pythonpath=os.pathsep.join([ROOT, HERE])
    )
    for shape, fields in report.items():
        for field, (one, many) in fields.items():
            one, many = np.asarray(one, float), np.asarray(many, float)
            if field in ("gride_ids", "gride_errs", "gride_scales", "twonn", "twonn_ml"):
                np.testing.assert_allclose(many, one, rtol=1e-5, err_msg=f"{shape} {field}")
            elif field in ("cos_mean", "cos_std"):
                np.testing.assert_allclose(many, one, atol=1e-6, err_msg=f"{shape} {field}")
            else:
                # n_unique, overlap, finite: counts over the same float32 distances,
                # each row block selected by the same code on any device: bit for
                # bit, whatever the near-ties; probe_accuracy(_std): the same fits
                np.testing.assert_array_equal(many, one, err_msg=f"{shape} {field}")
    assert set(report) == {"(8, 1)", "(4, 2)"}
    assert {"probe_accuracy", "probe_accuracy_std"} <= set(report["(8, 1)"])
    assert report["(8, 1)"]["n_unique"][0] == [590, 589, 590]
    h, mask = data()  # ... and float32 cannot decide the near-duplicate threshold there
    assert [tolerances.n_unique_atol(layer, mask) for layer in h] == [0, 0, 0]
