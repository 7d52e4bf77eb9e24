"""The row-blocked neighbour path equals the dense one on every field.

Small clouds, blocks of 64 rows (several blocks and a partial last one),
masks, exact duplicates, near-duplicates and exact ties (an integer lattice),
both selection backends; kernels checked against their dense counterparts.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tolerances

from geom_jax import metrics
from geom_jax.metrics.backends import blocked_context
from geom_jax.metrics.measures import imbalance, knn_graph
from geom_jax.metrics.neighbours import blocked_rows, distances, native_kernels, selection

N, D, BLOCK = 300, 16, 64


def _stack(seed=0):
    """[2 prompts, 3 layers, N, D]: a lattice (exact ties), a Gaussian with exact and
    near-duplicates, a curved 3-d manifold with a large offset; prompt 1 padded."""
    rng = np.random.default_rng(seed)
    h = np.empty((2, 3, N, D), np.float32)
    # 243 lattice points {-1, 0, 1}^5, each with its negation so that the centre is 0 and
    # every centred Gram entry exact (ties then go to the lower index on both paths)
    lattice = rng.integers(-1, 2, (2, N, 5))
    lattice[:, 130:260] = -lattice[:, :130]
    lattice[:, 280:] = -lattice[:, 260:280]
    h[:, 0] = 0.0
    h[:, 0, :, :5] = lattice
    g = rng.standard_normal((2, N, D)).astype(np.float32)
    g[:, 10] = g[:, 3]
    g[:, 200] = g[:, 3]
    g[:, 150] = g[:, 40] + 1e-7 * rng.standard_normal(D).astype(np.float32)
    h[:, 1] = g
    z = rng.standard_normal((2, N, 3))
    h[:, 2] = np.tanh(z @ rng.standard_normal((3, D))) * 2.0 + 30.0
    mask = np.ones((2, N), bool)
    mask[1, 260:] = False
    return h, mask


STACK, MASK = _stack()


def _geometry(path, method, observables="paper", stack=None, **kw):
    """layer_geometry of STACK, MASK (or stack = (points, mask)) on one path."""
    points, mask = (STACK, MASK) if stack is None else stack
    return metrics.layer_geometry(
        points,
        mask,
        observables=observables,
        range_max=64,
        max_k=8,
        selection=method,
        neighbour_path=path,
        **{"block_rows": BLOCK, **kw},
    )


RANK_ATOLS = tolerances.layer_geometry_atols(STACK, MASK, max_k=8)
"""The rank-derived fields' tolerances on STACK (tests/helpers/tolerances.py): nonzero only
where the near-duplicate pair (points 40 and 150) or the lattice's float32 keys leave
two candidates unorderable."""


def _compare(dense, blocked, atols=RANK_ATOLS):
    assert sorted(dense) == sorted(blocked)
    for field in dense:
        a, b = np.asarray(dense[field]), np.asarray(blocked[field])
        if field == "finite":
            np.testing.assert_array_equal(b, a, err_msg=field)
        elif field in tolerances.RANK_FIELDS:
            atol = atols[field][tuple(slice(0, n) for n in a.shape)]
            tolerances.assert_rank_field(b, a, field, atol, "blocked vs dense: ")
        else:
            # float32 rounding of the Gram blocks vs the full product, and the
            # cosine / spread statistics from D x D products: ~1e-7
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6, err_msg=field)


@pytest.mark.parametrize(("method", "observables"), [("host", "all"), ("xla", "paper")])
def test_fields_blocked_equal_dense(method, observables):
    dense = _geometry("dense", method, observables)
    blocked = _geometry("blocked", method, observables)
    _compare(dense, blocked)
    # no near-duplicate lies near the threshold: n_unique compares exactly
    assert not RANK_ATOLS["n_unique"].any()
    # the cases are what they claim: duplicates dropped, padding excluded
    n_unique = np.asarray(dense["n_unique"])
    assert n_unique[0, 1] == N - 3 and n_unique[1, 1] == 260 - 3
    assert (n_unique[:, 0] < np.asarray([N, 260])).all()  # the lattice repeats points


def test_auto_path_follows_the_budget(monkeypatch):
    assert not blocked_context.use_blocked("auto", 1, 4096)
    assert blocked_context.use_blocked("auto", 1, 4097)
    assert not blocked_context.use_blocked("auto", 16, 4096)
    assert blocked_context.use_blocked("auto", 17, 4096)
    assert not blocked_context.use_blocked("auto", 256, 1024)
    assert blocked_context.use_blocked("auto", 257, 1024)
    assert blocked_context.use_blocked("blocked", 1, 10)
    assert not blocked_context.use_blocked("dense", 8, 10**6)
    monkeypatch.setattr(blocked_context, "CLOUD_GRAM_BUDGET", 0)
    auto = metrics.layer_geometry(STACK[:1, :2], MASK[:1], range_max=32, max_k=8, block_rows=BLOCK)
    dense = metrics.layer_geometry(
        STACK[:1, :2], MASK[:1], range_max=32, max_k=8, neighbour_path="dense"
    )
    _compare(dense, auto, tolerances.layer_geometry_atols(STACK[:1, :2], MASK[:1], max_k=8))
    assert not np.array_equal(np.asarray(auto["cos_std"]), np.asarray(dense["cos_std"]))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="neighbour_path must be one of"):
        metrics.layer_geometry(STACK[0], neighbour_path="sparse")
    with pytest.raises(ValueError, match="block_rows must be a positive integer"):
        metrics.layer_geometry(STACK[0], block_rows=0)
    # The matrix entropy at alpha = 2 reads the cosine statistics, not the Gram matrix:
    # it runs on the blocked path too, whatever include_diagonal says.
    kw = dict(observables="matrix_entropy,cosine", include_diagonal=False)
    blocked = metrics.layer_geometry(STACK[0], neighbour_path="blocked", **kw)
    dense = metrics.layer_geometry(STACK[0], neighbour_path="dense", **kw)
    # -log(sum cos^2 / N^2) near 0 (an almost collinear layer): the float32 error of the
    # sum (~1e-7 relative) is an absolute error of the entropy, so atol, not rtol.
    np.testing.assert_allclose(blocked.matrix_entropy, dense.matrix_entropy, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cannot split rows over a mesh"):
        metrics.layer_geometry(
            STACK[0], neighbour_path="dense", mesh=jax.make_mesh((1,), ("data",))
        )


@jax.jit
def _kernels(x, valid):
    xc, _, sq = blocked_rows.centred_points(x, valid)
    gram, _ = distances.centred_gram(x, valid)
    near, ranked, keys, _ = blocked_rows.select(
        xc, sq, valid, valid, k_near=12, ranks=(16, 64), block=BLOCK, method="host"
    )
    ref_near, ref_ranked = selection.select_neighbours(
        gram, valid, k_near=12, ranks=(16, 64), method="host"
    )
    queries = jnp.stack([near[:, 0], ranked[:, 1]], axis=-1)
    ranks = blocked_rows.query_ranks(xc, sq, valid, queries, block=BLOCK)
    ref_ranks = imbalance.ranks_from_gram(gram, valid, queries)
    return near, ranked, keys, ref_near, ref_ranked, ranks, ref_ranks


def test_kernels_equal_their_dense_counterparts():
    # a symmetric integer lattice: every centred Gram entry is exact, so both paths
    # round nothing and even the Gram-ranked columns must agree
    x = jnp.asarray(STACK[0, 0])
    valid = jnp.asarray(np.ones(N, bool))
    near, ranked, keys, ref_near, ref_ranked, ranks, ref_ranks = (
        np.asarray(a) for a in _kernels(x, valid)
    )
    v = np.asarray(valid)
    np.testing.assert_array_equal(near[v], ref_near[v])
    np.testing.assert_array_equal(ranked[v], ref_ranked[v])
    np.testing.assert_array_equal(ranks[v], ref_ranks[v])
    assert np.isfinite(keys[v]).all() and (np.diff(keys[v], axis=-1) >= 0).all()


def test_sharded_rows_map_covers_every_row_once():
    mesh = jax.make_mesh((1,), ("data",))
    rows = blocked_rows.ShardedRows(mesh, "data")
    x = jnp.arange(N, dtype=jnp.int32)
    out = jax.jit(
        lambda x: rows(lambda s, x: jax.lax.dynamic_slice(x, (s,), (BLOCK,)), N, BLOCK, x)
    )(x)
    np.testing.assert_array_equal(np.asarray(out), np.arange(N))
    local = blocked_rows.LOCAL(lambda s, x: jax.lax.dynamic_slice(x, (s,), (BLOCK,)), N, BLOCK, x)
    np.testing.assert_array_equal(np.asarray(local), np.arange(N))


CLOUDS = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "clouds_reference.npz"))


@pytest.mark.parametrize("case", ["manifold", "smollm2_last_token"])
def test_blocked_path_matches_dadapy_on_dataset_clouds(case):
    points = CLOUDS[f"{case}/points"][:2]  # two layers: one consecutive pair
    geo = metrics.layer_geometry(
        points,
        observables="gride,overlap,info_imbalance",
        range_max=1024,
        max_k=30,
        neighbour_path="blocked",
        block_rows=384,
    )
    # the fixture's tolerances (README): no near-ties in these clouds, so float32
    # exact k-NN gives DADApy's float64 neighbours
    np.testing.assert_allclose(geo.gride_ids, CLOUDS[f"{case}/gride_ids"][:2], rtol=1e-4)
    np.testing.assert_allclose(geo.twonn, CLOUDS[f"{case}/twonn"][:2], rtol=1e-4)
    # the last-token cloud has 5 repeated windows (identical points); DADApy drops column 0
    # of each kNN list as "self", which for such a point may be its twin, so each of
    # those points may differ by one neighbour in each list: 2 / k each
    _, counts = np.unique(points[0], axis=0, return_counts=True)
    repeated = int(counts[counts > 1].sum())
    assert repeated == {"manifold": 0, "smollm2_last_token": 10}[case]
    dadapy_twins = repeated * 2.0 / (30 * points.shape[1])
    atol = tolerances.overlap_atol(points[None], None, 30)[0, :, 29] + dadapy_twins
    tolerances.assert_rank_field(
        geo.overlap[:, 29], CLOUDS[f"{case}/overlap_k30"][:1], "overlap", atol
    )
    # a rank off by one (a float32 near-tie) moves Delta by 2 / N^2, 1.25e-7 at N = 4000
    atol = tolerances.info_imbalance_next_atol(points[None])[0]
    tolerances.assert_rank_field(
        geo.info_imbalance_next, CLOUDS[f"{case}/info_imbalance"][:1], "info_imbalance_next", atol
    )


def test_reciprocity_gathered_positions_equal_the_table(monkeypatch):
    monkeypatch.setattr(knn_graph, "GATHER_ROWS", 100)  # steps at 0, 100 and 157 (overlap)
    rng = np.random.default_rng(3)
    idx = np.stack([np.argsort(rng.random((257, 257)), axis=-1)[:, :9] for _ in range(2)])
    idx = np.where(idx == np.arange(257)[:, None], -1, idx).astype(np.int32)
    lists = jnp.asarray(idx)
    table = knn_graph._back_positions(lists)
    gathered = knn_graph._back_positions_gathered(lists)
    ok = idx >= 0
    np.testing.assert_array_equal(np.asarray(gathered)[ok], np.asarray(table)[ok])
    assert (np.asarray(table)[ok] < 9).any()  # some edges are reciprocated


GRIDE_LARGE = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "gride_large_range.npz"))


def test_blocked_gride_at_large_ranges_matches_dadapy():
    """GRIDE up to rank 2048 of 5,000 points (tests/reference/gride_large_range.py; the
    20,000-point, range 8192 case of the same file takes ~20 s and is shown by a
    command in docs/history.md section 15)."""
    n = 5000
    geo = metrics.layer_geometry(
        GRIDE_LARGE["points"][None, :n],
        observables="gride",
        range_max=2048,
        neighbour_path="blocked",
        block_rows=1000,
    )
    # float32 exact neighbour distances against float64: ~1e-7 relative
    for field in ("gride_ids", "gride_errs", "gride_scales"):
        np.testing.assert_allclose(
            np.asarray(geo[field])[0], GRIDE_LARGE[f"{field}_{n}"], rtol=1e-5, err_msg=field
        )
    assert np.asarray(geo.gride_ids).shape == (1, 11)


@pytest.mark.parametrize("block", [64, 50, 40])
def test_symmetric_streaming_equals_the_row_blocks(block):
    """The CPU path over half of the Gram matrix (symmetric_rows: 5, 6 and 8 blocks of
    the 300 points, partial last blocks, odd and even counts) gives every field of the
    row-blocked XLA path (each block of rows against all columns), on the lattice's
    exact ties, the duplicates and near-duplicates and the padded prompt."""
    if not native_kernels.available():
        pytest.skip("no C++ compiler: the streaming path is not built")
    kw = dict(observables="all", block_rows=block)
    rows = _geometry("blocked", "xla", **kw)
    streamed = _geometry("blocked", "host", **kw)
    _compare(rows, streamed)
    np.testing.assert_array_equal(np.asarray(streamed["n_unique"]), np.asarray(rows["n_unique"]))


def test_blocked_cpu_program_is_cacheable():
    """On CPU the blocked selection is compiled custom calls (streaming update and
    finish), no Python host callback: JAX's persistent cache can keep the program."""
    if not native_kernels.available():
        pytest.skip("no C++ compiler: the streaming path is not built")
    x = np.random.default_rng(0).standard_normal((2, 256, 8)).astype(np.float32)
    fn = jax.jit(
        lambda x: metrics.layer_geometry(
            x, range_max=16, max_k=4, neighbour_path="blocked", block_rows=64, validate=False
        )
    )
    text = fn.lower(x).as_text()
    assert "geom_jax_stream_update" in text and "geom_jax_stream_finish" in text
    assert "callback" not in text
