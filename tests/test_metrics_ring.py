"""Points split over 8 simulated CPU devices, blocks passed around a ring
(neighbour_path="ring"), give what one device's blocked path gives, in less memory."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import subprocess_env, tolerances
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from geom_jax import metrics, sharding

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

N, D, LAYERS = 299, 16, 3
VALID = 290
"""299 points (not a multiple of 8 or 4: the last device's block is padded, and its
last tile of 32 rows overlaps the one before), the last 9 invalid."""


def data():
    """(hidden [2, 3, N, D], mask [2, N], labels [2, N]): prompt 0 a curved
    float cloud with an exact duplicate and a near-duplicate; prompt 1 an integer
    lattice symmetric about 0 (its centre and every Gram entry exact, so that its many
    tied distances are ordered by index on both paths) with exact duplicates."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((N, 3))
    curved = np.stack(
        [
            np.tanh(z @ rng.standard_normal((3, D))) + 0.05 * rng.standard_normal((N, D))
            for _ in range(LAYERS)
        ]
    )
    curved[1, 17] = curved[1, 4]
    curved[2, 30] = curved[2, 5] * (1 + 1e-7)
    half = rng.integers(-2, 3, (LAYERS, VALID // 2, D))
    half[:, 40] = half[:, 3]  # duplicates, and their mirror images
    lattice = np.concatenate([half, -half, rng.integers(-2, 3, (LAYERS, N - VALID, D))], 1)
    hidden = np.stack([curved, lattice]).astype(np.float32)
    mask = np.ones((2, N), bool)
    mask[:, VALID:] = False
    labels = rng.integers(-1, 4, (2, N))
    return hidden, mask, labels


OPTIONS = dict(
    # the pooled runs' set but tle_id, which the ring refuses
    observables="paper,info_imbalance,label_overlap,mle_id,participation_ratio",
    range_max=64,
    max_k=10,
    block_rows=32,
)

SCRIPT = r"""
import json
import jax, numpy as np
from geom_jax import metrics, sharding
from test_metrics_ring import OPTIONS, data, per_device_bytes
assert jax.device_count() == 8
h, mask, labels = data()
kw = dict(OPTIONS, inputs={"labels": labels})
one = metrics.layer_geometry(h, mask, neighbour_path="blocked", **kw)
report = {"fields": {}}
# each tile merged into the running lists on the host (NumPy), or by lax.top_k and
# lax.sort (the accelerators' way)
for shape, selection in [((8, 1), "auto"), ((4, 2), "xla")]:
    mesh = sharding.make_mesh(shape)
    ring = metrics.layer_geometry(
        h, mask, mesh=mesh, neighbour_path="ring", selection=selection, **kw
    )
    report["fields"][str(shape)] = {
        k: [np.asarray(one[k]).tolist(), np.asarray(ring[k]).tolist()] for k in one
    }
mesh = sharding.make_mesh((8, 1))
report["bytes"] = {path: per_device_bytes(mesh, path, 8192, 64) for path in ("ring", "blocked")}
print("REPORT " + json.dumps(report))
"""


def per_device_bytes(mesh, path, n, d, layers=2):
    """Argument + temporary + output bytes per device of stack_geometry's compiled
    program (the overlap of 32 neighbours: a selection and an exact re-ranking) on one
    cloud of n points per layer, the stack an argument split over the mesh's data axis
    on N ("ring") or replicated ("blocked", the ShardedRows rows)."""
    spec = P(None, None, "data", None) if path == "ring" else P()
    stack = jax.ShapeDtypeStruct((layers, 1, n, d), jnp.float32, sharding=NamedSharding(mesh, spec))
    step = jax.jit(
        lambda h: metrics.stack_geometry(
            h, mesh=mesh, neighbour_path=path, observables="overlap", max_k=32
        )
    )
    m = step.lower(stack).compile().memory_analysis()
    return m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes


@pytest.fixture(scope="module")
def report():
    return subprocess_env.report_on_simulated_devices(
        SCRIPT, pythonpath=os.pathsep.join([ROOT, HERE])
    )


ID_RTOL = 1e-6
"""The IDs' relative tolerance. Their likelihoods sum over the points, which the ring
adds as the devices' partial sums, in another order than one device; so is the centre
the Gram keys are taken from: its last bit may differ, and a Gram-ranked column at one
of GRIDE's high ranks swap with one an ulp away."""

IDS = ("gride_ids", "gride_errs", "twonn", "twonn_ml", "mle_id")


def test_ring_equals_one_device(report):
    hidden, mask, _ = data()
    atols = [tolerances.layer_geometry_atols(hidden[p : p + 1], mask[p : p + 1]) for p in (0, 1)]
    assert set(report["fields"]) == {"(8, 1)", "(4, 2)"}
    for shape, fields in report["fields"].items():
        assert {"gride_ids", "overlap", "info_imbalance_next", "label_overlap", "mle_id"} <= set(
            fields
        )
        for field, (one, ring) in fields.items():
            one, ring = np.asarray(one, float), np.asarray(ring, float)
            where = f"{shape} {field}"
            if field in ("info_imbalance_next", "info_imbalance_last"):
                # ranks counted on Gram keys: the near-duplicate's two keys lie within
                # an ulp, which the centre's rounding may order either way
                for p in (0, 1):
                    tolerances.assert_rank_field(ring[p], one[p], field, atols[p][field][0], where)
                np.testing.assert_array_equal(ring[1], one[1], err_msg=where)  # exact lattice
            elif field in ("cos_mean", "cos_std"):
                np.testing.assert_allclose(ring, one, rtol=0, atol=1e-6, err_msg=where)
            elif field in IDS:
                np.testing.assert_allclose(ring, one, rtol=ID_RTOL, atol=0, err_msg=where)
            elif one.dtype.kind == "f" and field != "overlap":
                # means over the points (GRIDE's scales, the label overlap): reordered
                tol = tolerances.REORDER_RTOL
                np.testing.assert_allclose(ring, one, rtol=tol, atol=0, err_msg=where)
            else:
                np.testing.assert_array_equal(ring, one, err_msg=where)
    fields = report["fields"]["(8, 1)"]
    # the duplicates are found and dropped on the ring as on one device: 290 valid
    # points, one duplicate at layer 1 and a near-duplicate at layer 2 of the float
    # cloud, and in every layer of the lattice a duplicate and its mirror image
    assert np.asarray(fields["n_unique"][1]).tolist() == [[290, 289, 289], [288, 288, 288]]
    assert [tolerances.n_unique_atol(layer, mask[0]) for layer in hidden[0]] == [0, 0, 0]


def test_ring_holds_less_than_the_replicated_rows(report):
    # 8,192 x 64 points, two layers on 8 devices: each device holds 1/8 of the stack
    # and one visiting block, where the replicated rows hold the stack and a block of
    # Gram rows of every point
    ring, blocked = report["bytes"]["ring"], report["bytes"]["blocked"]
    assert ring < blocked / 6, (ring, blocked)


def test_ring_needs_a_mesh():
    h, mask, _ = data()
    with pytest.raises(ValueError, match=r"neighbour_path='ring'.*mesh="):
        metrics.layer_geometry(h[0, :2], mask[0], neighbour_path="ring")


@pytest.mark.parametrize("observable", ["tle_id", "id_battery"])
def test_ring_refuses_what_needs_a_whole_cloud(observable):
    # the Gram entries between a point's neighbours (TLE), passes over every pair of a
    # cloud (CorrInt, FisherS): refused at trace time, naming the observable
    h, mask, _ = data()
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    with pytest.raises(ValueError, match=rf"observable '{observable}'.*neighbour_path='blocked'"):
        metrics.layer_geometry(
            h[0, :2], mask[0], mesh=mesh, neighbour_path="ring", observables=observable
        )
