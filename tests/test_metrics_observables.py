"""The observables beyond the paper's four: reference fixtures, float64 oracle,
layer_geometry(observables=...) against each function, registration, bad input."""

import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tolerances
from helpers.pinned_outputs import cloud, oracle_batch
from reference import oracle

from geom_jax import metrics, pipeline, results
from geom_jax.metrics.backends import conditioning
from geom_jax.metrics.declare import builtin, observable, registry
from geom_jax.metrics.measures import imbalance
from geom_jax.metrics.neighbours import distances

REF = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "observables_reference.npz"))
CASES = ["cube_dups", "gauss6", "llm", "swiss"]
GRAPH_CASES = ["gauss6", "llm", "swiss"]
"""Named, not read off the fixture: a case missing from it fails its tests (KeyError)."""


def ref(case, field):
    return REF[f"{case}/{field}"]


def rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got / want - 1.0)))


# ------------------------------------------------------------------ acceptance 1: fixtures


@pytest.mark.parametrize("case", CASES)
def test_id_estimators_match_scikit_dimension(case):
    points = ref(case, "points")
    for name, fn in (("mle", metrics.mle_id), ("tle", metrics.tle_id)):
        glob, pw = (np.asarray(a) for a in fn(points, id_k=20))
        assert rel(glob, ref(case, name)) < 1e-3, name
        for layer in range(points.shape[0]):
            got = pw[layer][~np.isnan(pw[layer])]  # NaN exactly at the duplicates
            assert rel(got, ref(case, f"{name}_pw_{layer}")) < 2e-3, (name, layer)
    if case == "cube_dups":
        keep = np.asarray(metrics.unique_mask(points))
        assert np.array_equal(np.isnan(pw), ~keep) and keep.sum() == 472


@pytest.mark.parametrize("case", CASES)
def test_spectral_observables_match_reference(case):
    points = ref(case, "points")
    assert rel(metrics.participation_ratio(points), ref(case, "participation_ratio")) < 1e-4
    for alpha in (1, 2):
        got = metrics.matrix_entropy(points, entropy_alpha=float(alpha))
        np.testing.assert_allclose(got, ref(case, f"matrix_entropy_{alpha}"), rtol=1e-3)


@pytest.mark.parametrize("case", GRAPH_CASES)
def test_graph_observables_match_reference(case):
    points = ref(case, "points")
    # Rank-derived fields: the rank rules of tests/helpers/tolerances.py from the points (the
    # changes swaps of neighbours float32 cannot order can cause; llm: 576
    # coordinates), plus each field's rounding.
    tolerances.assert_rank_field(
        metrics.reciprocity(points, max_k=32),
        ref(case, "reciprocity"),
        "reciprocity",
        tolerances.reciprocity_atol(points, 32),
    )
    sim = np.asarray(metrics.nn_similarity(points))
    sim_atol = tolerances.nn_similarity_atol(points)
    tolerances.assert_rank_field(sim, ref(case, "nn_similarity"), "nn_similarity", sim_atol)
    mean_atol = [tolerances.nn_similarity_mean_atol(p) for p in points]
    want = ref(case, "nn_similarity_mean")
    tolerances.assert_rank_field(sim.mean(-1), want, "nn_similarity_mean", mean_atol)
    np.testing.assert_allclose(metrics.curvature(points), ref(case, "curvature"), atol=1e-4)
    ii = metrics.information_imbalance(points[:-1], points[1:])
    ii_atol = tolerances.information_imbalance_atol(points[:-1], points[1:])
    tolerances.assert_rank_field(ii, ref(case, "info_imbalance"), "info_imbalance", ii_atol)


@pytest.mark.parametrize("case", ["llm"])
def test_layer_geometry_matches_reference(case):
    points = ref(case, "points")
    geo = metrics.layer_geometry(points, observables="all", range_max=64, max_k=32)
    assert rel(geo.mle_id, ref(case, "mle")) < 1e-3
    assert rel(geo.tle_id, ref(case, "tle")) < 1e-3
    atols = tolerances.layer_geometry_atols(points, max_k=32)  # the rank rules, [1, ...]
    for field, key in (
        ("reciprocity", "reciprocity"),
        ("info_imbalance_next", "info_imbalance"),
        ("nn_similarity", "nn_similarity_mean"),
    ):
        rule = "nn_similarity_mean" if field == "nn_similarity" else field
        tolerances.assert_rank_field(geo[field], ref(case, key), rule, atols[field][0])
    np.testing.assert_allclose(geo.matrix_entropy, ref(case, "matrix_entropy_2"), rtol=1e-3)
    for layer in range(points.shape[0]):
        assert rel(geo.local_id[layer], ref(case, f"mle_pw_{layer}")) < 2e-3


# ------------------------------------------------------------------ float64 oracle


@pytest.fixture(scope="module")
def batch():
    return oracle_batch()


def test_new_functions_match_float64_oracle(batch):
    """Each tolerance is the float32 error of the quantity (u = eps / 2 = 6e-8,
    D = 10 coordinates, N <= 120 points), not a value seen on one machine."""
    x, mask = batch
    y = np.tanh(1.3 * x) + 0.05 * np.random.default_rng(4).standard_normal(x.shape)
    y = y.astype(np.float32)
    rec = np.asarray(metrics.reciprocity(x, mask, max_k=10))
    sim = np.asarray(metrics.nn_similarity(x, mask))
    ii = np.asarray(metrics.information_imbalance(x, y, mask))
    mle_g, mle_p = (np.asarray(a) for a in metrics.mle_id(x, mask, id_k=10))
    tle_g, tle_p = (np.asarray(a) for a in metrics.tle_id(x, mask, id_k=10))
    pr = np.asarray(metrics.participation_ratio(x, mask))
    ent = {a: np.asarray(metrics.matrix_entropy(x, mask, entropy_alpha=a)) for a in (1.0, 3.0)}
    curv = np.asarray(metrics.curvature(x, mask))
    for b in range(2):
        m = mask[b]
        # Integer counts over neighbour lists, one division (one rounding), plus the
        # edges swaps of neighbours float32 cannot order may change (reciprocity_atol).
        want = oracle.reciprocity(x[b], 10, m)
        atol = tolerances.reciprocity_atol(x[b], 10, m)
        tolerances.assert_rank_field(rec[b], want, "reciprocity", atol, f"{b}: ")
        # cos = (|a|^2 + |b|^2 - |x1 - x2|^2) / (2 |a| |b|) from exact squared distances
        # (each <= D u): |error| <= D u (1 + r + r^2) / r, r = r2 / r1; 1e-4 covers r <
        # 150 (RANK_ROUNDING), plus any value where the two neighbours' set can change.
        atol = tolerances.nn_similarity_atol(x[b], m)[m]
        want = oracle.nn_similarity(x[b], m)
        tolerances.assert_rank_field(sim[b, m], want, "nn_similarity", atol, f"{b}: ")
        assert np.all(np.isnan(sim[b, ~m]))
        # 2 / N^2 times a sum of integer ranks: every rank agrees with float64 but where
        # float32 cannot single out the nearest neighbour or count its rank
        # (information_imbalance_atol, in steps of 2 / N^2); the rest is one rounding.
        want = oracle.information_imbalance(x[b], y[b], m)
        atol = tolerances.information_imbalance_atol(x[b], y[b], m)
        tolerances.assert_rank_field(ii[b], want, "info_imbalance", atol, f"{b}: ")
        # 1 / mean_j log(t_k / t_j): each log of a ratio of exact distances is off by
        # <= (D + 2) u absolute, against means ~1 / d ~ 0.3: ~3e-6; 1e-4 covers d < 100.
        g, p = oracle.mle(x[b], 10, m)
        assert rel(mle_g[b], g) < 1e-4 and rel(mle_p[b, m], p) < 1e-4
        assert np.all(np.isnan(mle_p[b, ~m]))
        # TLE's quadratic roots cancel in D_i^2 + V^2 - D_j^2: relative error ~u (D_i^2 +
        # V^2 + D_j^2) / |D_i^2 + V^2 - D_j^2| per neighbour pair, without bound as a
        # triangle degenerates, so there is no fixed float32 bound; these are the
        # scikit-dimension fixtures' tolerances, which that cancellation on the llm case
        # needs even with the rationalised forms (docs/history.md section 8).
        g, p = oracle.tle(x[b], 10, m)
        assert rel(tle_g[b], g) < 1e-3 and rel(tle_p[b, m], p) < 2e-3
        # tr(G)^2 / |G|_F^2: Gram entries off by <= D u |x_i| |x_j| (centred points) give
        # <= 2 D u PR <= 2 D^2 u = 1.2e-5, the N^2-term sum ~N u = 7e-6 typically.
        assert rel(pr[b], oracle.participation_ratio(x[b], m)) < 1e-4
        # From the singular values of the unit rows, the largest eigenvalue from the
        # trace: the tolerance follows the entropy's conditioning on the spectrum
        # (tests/helpers/tolerances.py; ~6e-5 here, where the offset clouds make S ~ 1e-2).
        spectrum = oracle.cosine_spectrum(x[b], m)
        for alpha, got in ent.items():
            np.testing.assert_allclose(
                got[b],
                oracle.matrix_entropy(x[b], alpha, m),
                rtol=tolerances.matrix_entropy_rtol(spectrum, alpha),
                err_msg=f"alpha={alpha}",
            )
        # Mean of 2 atan2(|a - b|, |a + b|) over unit steps (each <= (D + 2) u): well
        # conditioned at every angle, <= ~2e-6 with the mean's rounding.
        np.testing.assert_allclose(curv[b], oracle.curvature(x[b], m), atol=1e-4)


def test_curvature_small_angles_are_accurate():
    # A nearly straight line: arccos(u . w) in float32 would be off by ~5e-4 rad.
    t = np.arange(50, dtype=np.float64)
    x = np.stack([t, 1e-3 * np.sin(t), np.zeros_like(t)], -1) + 100.0
    got = float(metrics.curvature(x.astype(np.float32)))
    want = oracle.curvature(x.astype(np.float32))
    assert want < 3e-3 and abs(got - want) < 2e-5


def test_duplicates_are_nan_pointwise_and_kept_by_graph_observables():
    rng = np.random.default_rng(9)
    x = cloud(rng, 80, 3, 8)
    x[40] = x[5]
    _, pw = metrics.mle_id(x, id_k=8)
    assert np.isnan(pw[40]) and not np.isnan(pw[5])
    g, p = oracle.mle(x, 8)
    assert rel(np.asarray(pw)[~np.isnan(pw)], p) < 1e-4
    sim = np.asarray(metrics.nn_similarity(x))
    assert np.isnan(sim[40]) and np.isnan(sim[5])  # the nearest "direction" is zero
    rec = np.asarray(metrics.reciprocity(x, max_k=4))
    atol = tolerances.reciprocity_atol(x, 4)
    tolerances.assert_rank_field(rec, oracle.reciprocity(x, 4), "reciprocity", atol)


def test_information_imbalance_ranks_count_ties_and_masks_exactly():
    """ranks_from_gram (arithmetic step counts) against a NumPy count on the same
    float32 Gram matrix: lattice points and duplicates tie exactly, so the
    (key, index) order decides; masked columns never count."""
    rng = np.random.default_rng(4)
    lattice = rng.integers(-2, 3, size=(2, 60, 3)).astype(np.float32)
    lattice[:, 7] = lattice[:, 3]
    valid = np.ones((2, 60), bool)
    valid[0, 50:] = False
    valid[1, ::7] = False
    queries = rng.integers(0, 60, size=(2, 60, 3)).astype(np.int32)
    gram = np.asarray(distances.centred_gram(jnp.asarray(lattice), jnp.asarray(valid))[0])
    got = np.asarray(imbalance.ranks_from_gram(jnp.asarray(gram), jnp.asarray(valid), queries))
    sq = np.diagonal(gram, axis1=-2, axis2=-1)
    for c in range(2):
        keys = sq[c][None, :] - np.float32(2.0) * gram[c]
        for i in np.flatnonzero(valid[c]):
            others = valid[c] & (np.arange(60) != i)
            for slot, q in enumerate(queries[c, i]):
                if q == i or not valid[c, q]:
                    continue
                kq = keys[i, q]
                before = others & ((keys[i] < kq) | ((keys[i] == kq) & (np.arange(60) < q)))
                assert got[c, i, slot] == 1 + before.sum(), (c, i, q)
    assert (np.diff(np.sort(gram[0][:50, :50].ravel())) == 0).any()  # ties do occur


# ------------------------------------------------------------------ acceptance 2


@pytest.mark.slow  # ~10 compilations of the functions, one of layer_geometry
def test_layer_geometry_all_equals_each_function_on_unpadded_prompts():
    rng = np.random.default_rng(8)
    lengths, n_max, layers = [100, 73], 100, 3
    hidden = np.zeros((2, layers, n_max, 12), np.float32)
    mask = np.zeros((2, n_max), bool)
    prompts = []
    for b, n in enumerate(lengths):
        h = np.stack([cloud(rng, n, 2 + layer, 12, 3.0) for layer in range(layers)])
        h[1, 7] = h[1, 3]  # a duplicate in layer 1
        prompts.append(h)
        hidden[b, :, :n] = h
        hidden[b, :, n:] = rng.standard_normal((layers, n_max - n, 12))
        mask[b, :n] = True
    kw = dict(range_max=32, max_k=8, id_k=6, entropy_alpha=1.0)
    geo = metrics.layer_geometry(hidden, mask, observables="all", **kw)
    assert geo.reciprocity.shape == (2, layers, 8) and geo.local_id.shape == (2, layers, n_max)
    assert geo.info_imbalance_next.shape == (2, layers - 1, 2)
    assert geo.info_imbalance_last.shape == (2, layers, 2)
    close = dict(rtol=2e-5, atol=1e-6)
    # The padded prompt (73 of 100 points valid) against each function on its points
    # alone: rank-derived fields at their rank rules (tests/helpers/tolerances.py), the rest
    # (and the rank fields' rounding, two float32 paths) at `close`.
    for b, h in list(enumerate(prompts))[1:]:
        n = lengths[b]
        atols = tolerances.layer_geometry_atols(h, max_k=8)  # [1, ...]
        want = metrics.reciprocity(h, max_k=8)
        atol = atols["reciprocity"][0]
        tolerances.assert_rank_field(geo.reciprocity[b], want, "reciprocity", atol)
        sim = np.asarray(metrics.nn_similarity(h))
        tolerances.assert_rank_field(
            geo.nn_similarity[b],
            np.nanmean(sim, -1),
            "nn_similarity_mean",
            atols["nn_similarity"][0],
            round_atol=close["atol"],
            rtol=close["rtol"],
        )
        g, p = metrics.mle_id(h, id_k=6)
        np.testing.assert_allclose(geo.mle_id[b], g, **close)
        np.testing.assert_allclose(geo.local_id[b, :, :n], p, **close)
        assert np.all(np.isnan(geo.local_id[b, :, n:]))
        np.testing.assert_allclose(geo.tle_id[b], metrics.tle_id(h, id_k=6)[0], **close)
        np.testing.assert_allclose(
            geo.participation_ratio[b], metrics.participation_ratio(h), **close
        )
        np.testing.assert_allclose(
            geo.matrix_entropy[b], metrics.matrix_entropy(h, entropy_alpha=1.0), **close
        )
        np.testing.assert_allclose(geo.curvature[b], metrics.curvature(h), **close)
        last = np.broadcast_to(h[-1:], h.shape)
        for field, want in (
            ("info_imbalance_next", metrics.information_imbalance(h[:-1], h[1:])),
            ("info_imbalance_last", metrics.information_imbalance(h, last)),
        ):
            tolerances.assert_rank_field(geo[field][b], want, field, atols[field][0])
    # Only what was asked is computed and returned.
    few = metrics.layer_geometry(hidden, mask, observables="curvature,reciprocity", **kw)
    assert set(few) == {"curvature", "reciprocity", "finite"}
    np.testing.assert_array_equal(few.reciprocity, geo.reciprocity)
    np.testing.assert_array_equal(few.curvature, geo.curvature)


def test_observable_sets_resolve():
    assert registry.resolve("paper").names == ("gride", "cosine", "overlap")
    assert registry.resolve("paper,reciprocity").names == (
        "gride",
        "cosine",
        "overlap",
        "reciprocity",
    )
    assert registry.resolve(["reciprocity", "paper"]) == registry.resolve("paper,reciprocity")
    in_all = {n for n, o in registry.REGISTRY.items() if o.in_all}
    assert set(registry.resolve("all")) == in_all
    declared = {o.name for o in builtin.BUILTIN}
    # every built-in is in "all" but those needing the rows' labels (pooled runs: label
    # overlap, probes, adp_agreement), id_battery (asked for by name: its neighbourhoods of
    # 100 and PHD's subsets), density and adp (PAk's Newton steps, a host clustering)
    assert declared - in_all == {
        "label_overlap",
        "probes",
        "id_battery",
        "density",
        "adp",
        "adp_agreement",
    }
    assert "label_overlap" in set(registry.resolve("pooled"))
    assert "probes" not in set(registry.resolve("pooled"))  # opt-in: needs large classes
    with pytest.warns(DeprecationWarning, match="'dataset' is deprecated; use 'pooled'"):
        assert registry.resolve("dataset,mle_id") == registry.resolve("pooled")
    # lens comes from the geom_jax.observables entry point (setup.py), not the catalog,
    # and is model-level: asked for by name only.
    assert "lens" in registry.REGISTRY and "lens" not in {o.name for o in builtin.BUILTIN}
    assert "lens" not in in_all and "lens" in registry.resolve("paper,lens")
    assert registry.resolve("overlap,cosine,gride").canonical == "paper"
    assert registry.resolve("tle_id,mle_id").canonical == "mle_id,tle_id"


def test_result_fields_and_readme_derive_from_declarations(tmp_path):
    fields = {f.name: f for f in pipeline.result_fields("paper,mle_id,info_imbalance")}
    assert fields["local_id"].shape() == "[P, L, T]" and fields["local_id"].tokens
    assert fields["info_imbalance_next"].shape() == "[P, L-1, 2]"
    assert fields["cos_mean"].shape() == "[P, L+1]" and "twonn_ml" not in fields
    docs = results.field_docs("paper")
    assert list(docs) == [
        "prompt_index",
        "prompt_key",
        "shuffle_index",
        "shuffle_repeat",
        "gride_ids",
        "gride_errs",
        "gride_scales",
        "twonn",
        "n_unique",
        "cos_mean",
        "cos_std",
        "overlap",
        "loss",
        "token_nll",
        "finite",
        "status",
        "gride_n1",
    ]
    assert docs["overlap"].startswith("[P, L-1, K] chi_k") and docs["gride_n1"].startswith("[S]")
    assert "4 tokens merged as exact or near-duplicates" in docs["status"]
    assert "mle_id" not in docs and "mle_id" in results.field_docs("paper,mle_id")


# ------------------------------------------------------------------ acceptance 3


def test_registering_a_toy_observable_needs_nothing_else(tmp_path):
    def mean_norm(ctx):
        norm = jnp.sqrt(jnp.sum(ctx.x * ctx.x, axis=-1))
        return {"mean_norm": jnp.sum(norm * ctx.valid, -1) / jnp.sum(ctx.valid, -1)}

    toy = observable.Observable(
        name="mean_norm",
        compute=mean_norm,
        fields=(observable.Field("mean_norm", (), "mean token norm.", length=True),),
        doc="Mean Euclidean norm of the valid tokens.",
    )
    with registry.registered(toy):
        rng = np.random.default_rng(0)
        hidden = rng.standard_normal((2, 3, 20, 4)).astype(np.float32)
        mask = np.arange(20) < np.array([[20], [15]])
        geo = metrics.layer_geometry(hidden, mask, observables="mean_norm,curvature")
        want = [np.linalg.norm(hidden[b][:, mask[b]], axis=-1).mean(-1) for b in range(2)]
        np.testing.assert_allclose(geo.mean_norm, want, rtol=1e-6)
        assert "mean_norm" in registry.resolve("all")
        arrays = {
            "prompt_index": np.arange(2),
            "prompt_key": np.array(["a", "b"]),
            "shuffle_index": np.zeros(2, np.int32),
            "mean_norm": np.asarray(geo.mean_norm),
            "loss": np.ones(2),
            "token_nll": np.ones((2, 19)),
        }
        results.save_results(str(tmp_path), arrays, "mean_norm")
        with np.load(tmp_path / results.RESULTS_FILE) as z:
            np.testing.assert_array_equal(z["mean_norm"], geo.mean_norm)
        readme = (tmp_path / results.README_FILE).read_text()
        assert "| `mean_norm` | [2, 3] | [P, L] mean token norm. |" in readme
    with pytest.raises(ValueError, match="unknown observable 'mean_norm'"):
        metrics.layer_geometry(hidden, mask, observables="mean_norm")


def test_registration_rejects_clashes_and_unknown_inputs():
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("reciprocity"))
    clash = observable.Observable("x2", compute=lambda c: {}, fields=(observable.Field("twonn"),))
    with pytest.raises(ValueError, match="field 'twonn' of 'x2' is already a field of 'gride'"):
        registry.register(clash)
    odd = observable.Observable("x3", compute=lambda c: {}, fields=(), consumes=("logits",))
    with pytest.raises(ValueError, match="consumes 'logits', which is neither an intermediate"):
        registry.register(odd)


def test_observable_consuming_a_pipeline_input():
    def nll_weighted(ctx):
        nll = ctx.input("token_nll")  # [C, T-1]
        norm = jnp.sqrt(jnp.sum(ctx.x[:, 1:] ** 2, -1))
        return {"nll_norm": jnp.sum(nll * norm, -1)}

    obs = observable.Observable(
        "nll_norm",
        compute=nll_weighted,
        fields=(observable.Field("nll_norm", length=True),),
        consumes=("points", "token_nll"),
    )
    with registry.registered(obs):
        rng = np.random.default_rng(1)
        hidden = rng.standard_normal((2, 3, 10, 4)).astype(np.float32)
        nll = rng.random((2, 9)).astype(np.float32)
        with pytest.raises(ValueError, match="consumes 'token_nll': pass inputs"):
            metrics.layer_geometry(hidden, observables="nll_norm")
        geo = metrics.layer_geometry(hidden, observables="nll_norm", inputs={"token_nll": nll})
        want = np.einsum("bt,blt->bl", nll, np.linalg.norm(hidden[:, :, 1:], axis=-1))
        np.testing.assert_allclose(geo.nll_norm, want, rtol=1e-5)


# ------------------------------------------------------------------ acceptance 6


def test_bad_input_raises_before_compute():
    rng = np.random.default_rng(2)
    hidden = rng.standard_normal((2, 3, 40, 6)).astype(np.float32)
    with pytest.raises(
        ValueError, match=r"unknown observable 'reciprocty'; known: paper, pooled, all, gride"
    ):
        metrics.layer_geometry(hidden, observables="paper,reciprocty")
    with pytest.raises(ValueError, match=r"id_k=40 needs N >= 41"):
        metrics.layer_geometry(hidden, observables="mle_id", id_k=40)
    with pytest.raises(ValueError, match=r"entropy_alpha must be a number > 0, got 0"):
        metrics.layer_geometry(hidden, observables="matrix_entropy", entropy_alpha=0)
    with pytest.raises(ValueError, match=r"entropy_alpha must be a number > 0, got -1"):
        metrics.matrix_entropy(hidden[0, 0], entropy_alpha=-1.0)
    mask = np.ones((2, 40), bool)
    mask[1, 15:] = False
    with pytest.raises(
        ValueError, match=r"mask: id_k=20 needs >= 21 valid points, but prompt \(1,\) has 15"
    ):
        metrics.layer_geometry(hidden, mask, observables="tle_id", id_k=20)
    dup = hidden.copy()
    dup[0, 2, 21:] = dup[0, 2, 0]  # layer 2 of prompt 0: 21 distinct points
    with pytest.raises(
        ValueError,
        match=r"id_k=21 needs >= 22 distinct valid points, but prompt \(0,\), layer 2 has 21",
    ):
        metrics.layer_geometry(dup, observables="mle_id", id_k=21)
    with pytest.raises(
        ValueError, match=r"id_k=21 needs >= 22 distinct valid points, but cloud \(2,\) has 21"
    ):
        metrics.mle_id(dup[0], id_k=21)
    with pytest.raises(
        ValueError, match=r"mask: max_k=20 needs >= 21 valid points, but cloud \(1,\) has 15"
    ):
        metrics.reciprocity(hidden[:, 0], mask, max_k=20)
    with pytest.raises(ValueError, match=r"id_k=50 needs N >= 51"):
        metrics.tle_id(hidden[0, 0], id_k=50)


def test_carried_observables_chunked_equal_unchunked():
    # 5 layers in chunks of 2: a scan with the Gram matrix carried across chunks,
    # and an overlapping last chunk whose carry belongs to another layer.
    rng = np.random.default_rng(6)
    base = cloud(rng, 60, 3, 8)
    hidden = np.stack([base * (1 + 0.2 * i) + 0.3 * np.sin(i * base) for i in range(5)])
    hidden = hidden.astype(np.float32)
    kw = dict(observables="info_imbalance", max_k=4)
    whole = metrics.layer_geometry(hidden, layer_chunk=5, **kw)
    chunked = metrics.layer_geometry(hidden, layer_chunk=2, **kw)
    for field in whole:  # the same float32 values in other chunks: bit for bit
        np.testing.assert_array_equal(chunked[field], whole[field], err_msg=field)
    tolerances.assert_rank_field(
        whole.info_imbalance_next,
        metrics.information_imbalance(hidden[:-1], hidden[1:]),
        "info_imbalance_next",
        tolerances.info_imbalance_next_atol(hidden)[0],
    )


def test_curvature_skips_masked_tokens_in_order():
    rng = np.random.default_rng(12)
    x = cloud(rng, 50, 3, 6)
    mask = np.ones(50, bool)
    mask[[3, 4, 20, 49]] = False  # holes, not only a padded tail
    got = float(metrics.curvature(x, mask))
    np.testing.assert_allclose(got, oracle.curvature(x, mask), atol=1e-5)
    assert abs(got - float(metrics.curvature(x))) > 1e-3


def test_prompt_scope_and_map_layers():
    # A prompt-scope observable reading the stack through map_layers (chunks of 2 of 5
    # layers, the last overlapping) and the last layer directly.
    def combine(_, pctx):
        norms = pctx.map_layers(lambda x, v: jnp.sum(jnp.sqrt(jnp.sum(x * x, -1)) * v, -1))
        norms = conditioning.restore_lengths(norms, pctx.exponent)  # [L, B], input units
        last = conditioning.restore_lengths(pctx.hidden[-1, :, 0, 0], pctx.exponent[-1])
        return {"norm_sum": jnp.sum(norms, 0), "last_first": last}

    toy = observable.Observable(
        "stack_toy",
        scope="prompt",
        combine=combine,
        fields=(
            observable.Field("norm_sum", (), "", ""),
            observable.Field("last_first", (), "", ""),
        ),
        consumes=("stack",),
    )
    with registry.registered(toy):
        rng = np.random.default_rng(3)
        hidden = rng.standard_normal((2, 5, 12, 3)).astype(np.float32)
        mask = np.arange(12) < np.array([[12], [9]])
        geo = metrics.layer_geometry(hidden, mask, observables="stack_toy", layer_chunk=2)
        want = [np.linalg.norm(hidden[b][:, mask[b]], axis=-1).sum() for b in range(2)]
        np.testing.assert_allclose(geo.norm_sum, want, rtol=1e-5)
        np.testing.assert_array_equal(geo.last_first, hidden[:, -1, 0, 0])
        assert registry.get("stack_toy").fields[0].shape() == "[P]"


def test_former_keywords_still_work_with_a_warning():
    """mle_id / tle_id(k=), matrix_entropy(alpha=) and label_overlap(k=), the names
    before the keywords took their options' names, give the same values."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    labels = np.arange(50) % 4
    pairs = [
        (lambda: metrics.mle_id(x, id_k=7)[0], lambda: metrics.mle_id(x, k=7)[0], "mle_id(k="),
        (lambda: metrics.tle_id(x, id_k=7)[0], lambda: metrics.tle_id(x, k=7)[0], "tle_id(k="),
        (
            lambda: metrics.matrix_entropy(x, entropy_alpha=1.0),
            lambda: metrics.matrix_entropy(x, alpha=1.0),
            "matrix_entropy(alpha=",
        ),
        (
            lambda: metrics.label_overlap(x, labels, label_k=5),
            lambda: metrics.label_overlap(x, labels, k=5),
            "label_overlap(k=",
        ),
    ]
    for current, former, name in pairs:
        with pytest.warns(DeprecationWarning, match=re.escape(name)):
            old = np.asarray(former())
        np.testing.assert_array_equal(old, np.asarray(current()))
    with pytest.raises(TypeError, match="former name of id_k"):
        metrics.mle_id(x, k=7, id_k=7)
