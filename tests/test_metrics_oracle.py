"""JAX metrics against the float64 NumPy oracle: random clouds, masks, ties, duplicates."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import subprocess_env, tolerances
from reference import oracle

from geom_jax import metrics
from geom_jax.metrics import compute
from geom_jax.metrics.neighbours import host_selection, native_kernels

HERE = os.path.dirname(os.path.abspath(__file__))
RANGE_MAX = 64
MAX_K = 10


def manifold_cloud(rng, n, d_int, d, offset=0.0, noise=1e-2):
    """A curved d_int-dimensional manifold in d dims plus noise (float32)."""
    z = rng.standard_normal((n, d_int))
    a = rng.standard_normal((d_int, d))
    b = rng.standard_normal((d_int, d))
    x = np.tanh(z @ a) + 0.3 * np.sin(z @ b) + noise * rng.standard_normal((n, d))
    return (x + offset).astype(np.float32)


@pytest.fixture(scope="module")
def batch():
    """Clouds [3, 150, 12]; the last two have padded tails and duplicate points."""
    rng = np.random.default_rng(7)
    x = np.stack([manifold_cloud(rng, 150, 3, 12) for _ in range(3)])
    mask = np.ones((3, 150), bool)
    mask[1, 120:] = False
    mask[2, 100:] = False
    x[1, 30] = x[1, 3]  # duplicate of a valid earlier point
    x[1, 31] = x[1, 3]
    x[2, 40] = x[2, 110]  # first copy is padding: the valid copy at 40 is kept
    x[2, 60] = x[2, 40]
    x[2, 120:] = np.nan  # garbage in padding never reaches valid outputs
    return x, mask


def per_cloud(x, mask):
    for b in range(x.shape[0]):
        yield b, x[b], mask[b]


def test_unique_mask_matches_oracle(batch):
    x, mask = batch
    keep = np.asarray(metrics.unique_mask(np.nan_to_num(x), mask))
    for b, xb, mb in per_cloud(x, mask):
        expected = np.zeros(xb.shape[0], bool)
        expected[oracle.unique_first(np.nan_to_num(xb), mb)] = True
        np.testing.assert_array_equal(keep[b], expected)
    assert not keep[1, 30] and not keep[1, 31] and keep[2, 40] and not keep[2, 60]


def test_pairwise_distances_match_cdist():
    rng = np.random.default_rng(0)
    x = manifold_cloud(rng, 120, 4, 20, offset=30.0)
    d = np.asarray(metrics.pairwise_distances(x))
    ref = oracle.distances(x)
    assert np.all(np.diag(d) == 0)
    np.testing.assert_allclose(d, ref, rtol=0, atol=2e-5 * ref.max())


def test_gride_and_twonn_match_oracle(batch):
    x, mask = batch
    ids, errs, scales = (np.asarray(a) for a in metrics.gride(x, mask, range_max=RANGE_MAX))
    twonn = np.asarray(metrics.twonn(x, mask, discard_fraction=0.1))
    twonn_ml = np.asarray(metrics.twonn(x, mask, discard_fraction=0.0))
    assert ids.shape == (3, 6)
    for b, xb, mb in per_cloud(x, mask):
        r_ids, r_errs, r_scales = oracle.gride(xb, RANGE_MAX, mb)
        np.testing.assert_allclose(ids[b], r_ids, rtol=1e-4)
        np.testing.assert_allclose(errs[b], r_errs, rtol=1e-4)
        np.testing.assert_allclose(scales[b], r_scales, rtol=1e-5)
        np.testing.assert_allclose(twonn[b], oracle.twonn(xb, 0.1, mb), rtol=1e-4)
        np.testing.assert_allclose(twonn_ml[b], oracle.twonn(xb, 0.0, mb), rtol=1e-4)


def test_gride_unsupported_scales_are_nan():
    rng = np.random.default_rng(3)
    x = manifold_cloud(rng, 100, 2, 8)
    mask = np.arange(100) < 40
    ids, errs, scales = (np.asarray(a) for a in metrics.gride(x, mask, range_max=64))
    # N = 100 gives S = 6 scales (n2 up to 64); 40 valid points support n2 <= 39, i.e. 5 scales.
    assert ids.shape == (6,)
    assert np.isnan(ids[5]) and np.isnan(errs[5]) and np.isnan(scales[5])
    r_ids, _, _ = oracle.gride(x, 64, mask)
    np.testing.assert_allclose(ids[:5], r_ids[:5], rtol=1e-4)


def test_overlap_and_cosine_match_oracle(batch):
    x, mask = batch
    rng = np.random.default_rng(1)
    y = np.tanh(x * 1.5) + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    chi = np.asarray(metrics.neighbourhood_overlap(x, y, mask, max_k=MAX_K))
    chi_atol = tolerances.overlap_atol(np.stack([x, y], 1), mask, MAX_K)[:, 0]  # [3, MAX_K]
    mean, std = (np.asarray(a) for a in metrics.cosine_similarity_stats(x, mask))
    mean_nd, std_nd = (
        np.asarray(a) for a in metrics.cosine_similarity_stats(x, mask, include_diagonal=False)
    )
    for b, xb, mb in per_cloud(x, mask):
        want = oracle.overlap(xb, y[b], MAX_K, mb)
        tolerances.assert_rank_field(chi[b], want, "overlap", chi_atol[b], f"{b}: ")
        r_mean, r_std = oracle.cosine_stats(xb, mb)
        np.testing.assert_allclose([mean[b], std[b]], [r_mean, r_std], atol=1e-6)
        r_mean, r_std = oracle.cosine_stats(xb, mb, include_diagonal=False)
        np.testing.assert_allclose([mean_nd[b], std_nd[b]], [r_mean, r_std], atol=1e-6)
    assert 0.0 < chi.min() and chi.max() <= 1.0


def test_knn_matches_oracle_with_mask(batch):
    x, mask = batch
    dists, idx = (np.asarray(a) for a in metrics.knn(x, mask, k=MAX_K))
    for b, xb, mb in per_cloud(x, mask):
        valid = np.flatnonzero(mb)
        ref_idx = valid[oracle.neighbour_lists(xb[valid], MAX_K)]
        np.testing.assert_array_equal(idx[b, valid], ref_idx)
        ref_d = oracle.distances(xb[valid])[
            np.arange(valid.size)[:, None], oracle.neighbour_lists(xb[valid], MAX_K)
        ]
        np.testing.assert_allclose(dists[b, valid], ref_d, rtol=1e-5, atol=1e-7)


def test_knn_ties_go_to_lower_index():
    # A symmetric integer lattice (mean exactly 0, so the centred Gram matrix is
    # exact): many exactly equal distances, plus exact duplicates (distance 0).
    g = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    x = np.concatenate([g, g[[5, 5, 17]], -g[[5, 5, 17]]]).astype(np.float32)
    x = x[np.random.default_rng(0).permutation(x.shape[0])]
    dists, idx = (np.asarray(a) for a in metrics.knn(x, k=12))
    ref = oracle.neighbour_lists(x, 12)
    np.testing.assert_array_equal(idx, ref)
    d = oracle.distances(x)
    np.testing.assert_allclose(dists, np.take_along_axis(d, ref, 1), rtol=1e-6)
    assert (dists[:, 1:] >= dists[:, :-1]).all()
    assert (dists[:, 1:] == dists[:, :-1]).mean() > 0.5


def _naive_gram_lists(x, k):
    """Uncentred float32 Gram trick, no refinement: what the refinement protects against."""
    x = jnp.asarray(x)
    g = x @ x.T
    n = jnp.diagonal(g)
    d2 = n[:, None] + n[None, :] - 2 * g
    d2 = jnp.where(jnp.eye(x.shape[0], dtype=bool), jnp.inf, d2)
    return np.asarray(jax.lax.top_k(-d2, k)[1])


def test_knn_large_common_offset():
    rng = np.random.default_rng(11)
    x = manifold_cloud(rng, 200, 3, 16, offset=3e3)
    ref = oracle.neighbour_lists(x, MAX_K)
    naive = _naive_gram_lists(x, MAX_K)
    assert (naive != ref).mean() > 0.3  # the Gram trick alone fails here
    dists, idx = (np.asarray(a) for a in metrics.knn(x, k=MAX_K))
    np.testing.assert_array_equal(idx, ref)
    d = oracle.distances(x)
    np.testing.assert_allclose(dists, np.take_along_axis(d, ref, 1), rtol=1e-5)
    twin = x[:, ::-1] * 2.0  # the same distances (x4), summed in another order
    chi = np.asarray(metrics.neighbourhood_overlap(x, twin, max_k=MAX_K))
    chi_atol = tolerances.overlap_atol(np.stack([x, twin])[None], None, MAX_K)[0, 0]
    tolerances.assert_rank_field(chi, np.ones(MAX_K), "overlap", chi_atol)


def test_knn_distances_are_refined_exactly():
    # Two tight clusters far from their common centre: centring cannot remove
    # the cancellation, so Gram distances are off; returned ones must be exact.
    rng = np.random.default_rng(5)
    c = np.zeros(16, np.float32)
    c[0] = 1e3
    x = np.concatenate(
        [c + 1e-2 * rng.standard_normal((60, 16)), -c + 1e-2 * rng.standard_normal((60, 16))]
    )
    x = x.astype(np.float32)
    dists, idx = (np.asarray(a) for a in metrics.knn(x, k=5))
    direct = np.sqrt(((x[:, None, :] - x[idx]) ** 2).sum(-1, dtype=np.float64))
    np.testing.assert_allclose(dists, direct, rtol=2e-6)
    gram = np.asarray(metrics.pairwise_distances(x))
    assert np.max(np.abs(np.take_along_axis(gram, idx, 1) - direct) / direct) > 1e-2
    assert ((idx < 60) == (np.arange(120) < 60)[:, None]).all()


def _stack_and_mask():
    rng = np.random.default_rng(21)
    base = manifold_cloud(rng, 130, 3, 10)
    layers = [base]
    for _ in range(4):
        layers.append(
            np.tanh(layers[-1] @ rng.standard_normal((10, 10)).astype(np.float32) * 0.7) + 0.01
        )
    h = np.stack(layers).astype(np.float32)
    h[0, 50] = h[0, 2]  # duplicate in the first layer only
    hidden = np.stack([h, h[:, ::-1] * 1.1 + 3.0])  # [2, 5, 130, 10]
    mask = np.ones((2, 130), bool)
    mask[1, 100:] = False
    return hidden, mask


def _assert_same(a, b):
    # host and XLA selection order the same float32 distances (ties by index): the
    # same lists, so every field, rank-derived ones included, is bit for bit
    for field in a:
        np.testing.assert_array_equal(
            np.asarray(getattr(a, field)), np.asarray(getattr(b, field)), err_msg=field
        )


def test_selection_paths_identical():
    hidden, mask = _stack_and_mask()
    host = metrics.layer_geometry(hidden, mask, range_max=RANGE_MAX, max_k=MAX_K, selection="host")
    xla = metrics.layer_geometry(hidden, mask, range_max=RANGE_MAX, max_k=MAX_K, selection="xla")
    _assert_same(host, xla)
    results = [metrics.knn(hidden[0, 0], k=MAX_K, selection=s) for s in ("host", "xla", "auto")]
    for dists, idx in results[1:]:
        np.testing.assert_array_equal(idx, results[0][1])
        np.testing.assert_array_equal(dists, results[0][0])


def test_layer_chunk_equals_unchunked():
    hidden, mask = _stack_and_mask()
    full = metrics.layer_geometry(hidden, mask, range_max=RANGE_MAX, max_k=MAX_K, layer_chunk=5)
    chunked = metrics.layer_geometry(hidden, mask, range_max=RANGE_MAX, max_k=MAX_K, layer_chunk=2)
    _assert_close(chunked, full)
    assert compute.auto_layer_chunk(31, 1, 1024) == 2 and compute.auto_layer_chunk(33, 1, 4096) == 1
    assert compute.auto_layer_chunk(5, 2, 130) == 5


def test_layer_geometry_matches_oracle_per_layer():
    hidden, mask = _stack_and_mask()
    geo = metrics.layer_geometry(hidden, mask, range_max=RANGE_MAX, max_k=MAX_K)
    assert geo.gride_ids.shape == (2, 5, 6) and geo.overlap.shape == (2, 4, MAX_K)
    # counts: one step per neighbour pair float32 cannot order (overlap_atol; one
    # near-tie here)
    chi_atol = tolerances.overlap_atol(hidden, mask, MAX_K)
    for b in range(2):
        for layer in range(5):
            xb = hidden[b, layer]
            ids, errs, scales = oracle.gride(xb, RANGE_MAX, mask[b])
            np.testing.assert_allclose(geo.gride_ids[b, layer], ids, rtol=1e-4)
            np.testing.assert_allclose(
                geo.twonn[b, layer], oracle.twonn(xb, 0.1, mask[b]), rtol=1e-4
            )
            cm, cs = oracle.cosine_stats(xb, mask[b])
            np.testing.assert_allclose(
                [geo.cos_mean[b, layer], geo.cos_std[b, layer]], [cm, cs], atol=1e-6
            )
            if layer < 4:
                chi = oracle.overlap(xb, hidden[b, layer + 1], MAX_K, mask[b])
                where = f"{b}, {layer}: "
                tolerances.assert_rank_field(
                    geo.overlap[b, layer], chi, "overlap", chi_atol[b, layer], where
                )
    # Prompt 1 reverses the tokens: the copy at 127 is padding, so 79 (= 130 - 1 - 50) stays.
    assert geo.n_unique[0, 0] == 129 and geo.n_unique[1, 0] == 100 and geo.n_unique[0, 1] == 130
    # ... and no pair lies where float32 could decide the near-duplicate threshold
    assert not _atols()["n_unique"].any()


def test_batching_with_padding_equals_unpadded_prompts():
    rng = np.random.default_rng(8)
    lengths = [140, 97]
    n_max = 140
    hidden = np.zeros((2, 4, n_max, 12), np.float32)
    mask = np.zeros((2, n_max), bool)
    prompts = []
    for b, n in enumerate(lengths):
        h = np.stack([manifold_cloud(rng, n, 2 + layer, 12) for layer in range(4)])
        prompts.append(h)
        hidden[b, :, :n] = h
        hidden[b, :, n:] = rng.standard_normal((4, n_max - n, 12))  # padding garbage
        mask[b, :n] = True
    batched = metrics.layer_geometry(hidden, mask, range_max=RANGE_MAX, max_k=MAX_K)
    for b, h in enumerate(prompts):
        single = metrics.layer_geometry(h, range_max=RANGE_MAX, max_k=MAX_K)
        atols = tolerances.layer_geometry_atols(h, max_k=MAX_K)  # the rank rules, [1, ...]
        for field in ("overlap", "n_unique"):
            want = np.asarray(single[field])
            where = f"padded vs alone, {b}: "
            tolerances.assert_rank_field(batched[field][b], want, field, atols[field][0], where)
        for field in (
            "gride_ids",
            "gride_errs",
            "gride_scales",
            "twonn",
            "twonn_ml",
            "cos_mean",
            "cos_std",
        ):
            np.testing.assert_allclose(
                np.asarray(getattr(batched, field))[b],
                np.asarray(getattr(single, field)),
                rtol=2e-6,
                atol=1e-7,
                err_msg=field,
            )


@functools.cache
def _atols():
    """The rank rules' tolerances (tests/helpers/tolerances.py) on _stack_and_mask()."""
    return tolerances.layer_geometry_atols(*_stack_and_mask(), max_k=MAX_K)


def _assert_close(a, b):
    """Two float32 paths over _stack_and_mask(): rank-derived fields at their rank
    rules, the others to 1e-6 relative."""
    for field in a:
        got, want = np.asarray(getattr(a, field)), np.asarray(getattr(b, field))
        if field in tolerances.RANK_FIELDS:
            tolerances.assert_rank_field(got, want, field, _atols()[field], "paths: ")
        else:
            np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=field)


def test_jit_and_vmap():
    hidden, mask = _stack_and_mask()
    direct = metrics.layer_geometry(hidden, mask, range_max=RANGE_MAX, max_k=MAX_K)
    fn = lambda h, m: metrics.layer_geometry(h, m, range_max=RANGE_MAX, max_k=MAX_K)
    vmapped = jax.jit(jax.vmap(fn))(hidden, mask)
    _assert_close(direct, vmapped)


SHARD_MAP_SCRIPT = """
import jax, numpy as np
from test_metrics_oracle import MAX_K, RANGE_MAX, _assert_close, _stack_and_mask
from geom_jax import metrics
assert jax.device_count() == 2, jax.devices()
hidden, mask = _stack_and_mask()
direct = metrics.layer_geometry(hidden, mask, range_max=RANGE_MAX, max_k=MAX_K)
mesh = jax.make_mesh((2,), ("data",))
spec = jax.sharding.PartitionSpec("data")
put = lambda a: jax.device_put(a, jax.sharding.NamedSharding(mesh, spec))
chunked = lambda h, m: metrics.layer_geometry(h, m, range_max=RANGE_MAX, max_k=MAX_K, layer_chunk=2)
fn = jax.jit(jax.shard_map(chunked, mesh=mesh, in_specs=(spec, spec), out_specs=spec))
sharded = fn(put(hidden), put(mask))
shards = sharded.gride_ids.addressable_shards
assert len({s.device for s in shards}) == 2 and all(s.data.shape[0] == 1 for s in shards)
_assert_close(direct, sharded)
print("SHARDED OK")
"""


def test_shard_map_on_two_devices():
    """One prompt per device on 2 simulated CPU devices equals the unsharded call."""
    env = subprocess_env.cpu_env(
        "--xla_force_host_platform_device_count=2",
        PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, "-c", SHARD_MAP_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "SHARDED OK" in proc.stdout, proc.stderr[-4000:]


def test_auto_selection_is_xla_below_the_host_threshold():
    """ "auto" means the host backend on CPU from AUTO_HOST_MIN_POINTS points per cloud
    and XLA's below (identical results, test_selection_paths_identical): the small
    cloud's program then holds no host callback, so JAX's persistent compilation cache
    can keep it for the next process."""
    small = host_selection.AUTO_HOST_MIN_POINTS - 1
    assert host_selection.for_cloud("auto", small) == "xla"
    assert host_selection.for_cloud("auto", small + 1) == "auto"
    assert host_selection.for_cloud("host", 3) == "host"
    _, opts = compute.prepare("paper", small, range_max=8, max_k=4)
    assert opts["selection"] == "xla"
    _, opts = compute.prepare("paper", small + 1, range_max=8, max_k=4)
    assert opts["selection"] == "auto"

    def program(n):
        x = np.random.default_rng(0).standard_normal((1, 2, n, 6)).astype(np.float32)
        fn = jax.jit(lambda x: metrics.layer_geometry(x, range_max=8, max_k=4, validate=False))
        return fn.lower(x).as_text()

    assert "callback" not in program(small)
    assert "geom_jax_select_rows" not in program(small)
    if native_kernels.row_selection_preferred(small + 1, 16):
        # the compiled selection (the suite runs with a persistent compilation cache):
        # a custom call, still no host callback
        assert "callback" not in program(small + 1)
        assert "geom_jax_select_rows" in program(small + 1)
    else:
        assert "callback" in program(small + 1)
