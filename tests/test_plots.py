"""Figures and report from synthetic result folders."""

import os

import numpy as np
import pytest

from geom_jax import report, results
from geom_jax.io import files
from geom_jax.metrics.measures.sections import intrinsic_dimension, local_id


def _fake_run(folder, *, levels, num_prompts=6, layers=5, scales=4, k=8, t=16, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(p, s) for p in range(num_prompts) for s in levels]
    pi = np.array([p for p, _ in rows])
    si = np.array([s for _, s in rows], np.int32)
    loss = 2.0 + 0.3 * si + rng.normal(0, 0.1, len(rows))
    ids = 5.0 + si[:, None, None] + rng.normal(0, 0.2, (len(rows), layers, scales))
    ids[:, 2, 0] += 3.0 * (loss - loss.mean())  # layer 3 correlates with the loss
    arrays = {
        "prompt_index": pi,
        "prompt_key": np.array([f"p{p}" for p in pi]),
        "shuffle_index": si,
        "gride_ids": ids,
        "gride_errs": np.full_like(ids, 0.1),
        "gride_scales": np.cumsum(np.ones_like(ids), -1),
        "gride_n1": 2 ** np.arange(scales),
        "twonn": ids[..., 0],
        "overlap": rng.uniform(0, 1, (len(rows), layers - 1, k)),
        "cos_mean": rng.uniform(0, 1, (len(rows), layers + 1)),
        "cos_std": rng.uniform(0, 0.1, (len(rows), layers + 1)),
        "loss": loss,
        "token_nll": rng.uniform(0, 5, (len(rows), t - 1)),
    }
    os.makedirs(folder)
    results.save_results(str(folder), arrays)
    files.write_json(os.path.join(folder, results.METADATA_FILE), {"model": "toy"})
    return arrays


def test_report_numbers_match_the_data(tmp_path):
    structured = _fake_run(tmp_path / "s", levels=[0], num_prompts=8, seed=1)
    shuffled = _fake_run(tmp_path / "sh", levels=[0, 1, 2], seed=2)
    path = report.make_report([str(tmp_path / "s"), str(tmp_path / "sh")], str(tmp_path / "rep"))
    text = open(path).read()
    (run,) = report.load_runs([str(tmp_path / "s"), str(tmp_path / "sh")])
    # Structured rows are pooled once: 8 from the structured folder, the shuffled run's s=0 dropped.
    assert len(run.rows(0)) == 8
    want_loss = structured["loss"].astype(np.float32)  # stored in its declared dtype
    np.testing.assert_array_equal(run.arrays["loss"][run.rows(0)], want_loss)
    h = intrinsic_dimension.headline(run)
    want_peak0 = structured["gride_ids"][:6, :, 0].max(1).mean()  # prompts run at s=2 too
    want_peak2 = shuffled["gride_ids"][shuffled["shuffle_index"] == 2][:, :, 0].max(1).mean()
    assert h["peak_id"][0] == pytest.approx(structured["gride_ids"][:, :, 0].max(1).mean())
    assert h["peak_id"][2] == pytest.approx(want_peak2)
    paired0 = shuffled["gride_ids"][shuffled["shuffle_index"] == 0]
    # Prompts 0-5 were run at both levels; the s=0 rows kept are the structured folder's.
    assert h["paired_prompts"] == 6
    assert h["peak_ratio"] == pytest.approx(want_peak2 / want_peak0)
    kept = run.arrays["gride_ids"][run.rows(0)][:6]
    np.testing.assert_array_equal(kept, structured["gride_ids"][:6].astype(np.float32))
    assert not np.allclose(kept, paired0)  # the shuffled folder's s=0 rows were dropped
    r = h["pearson"]
    want_r = np.corrcoef(structured["gride_ids"][:, 2, 0], structured["loss"])[0, 1]
    assert r[2] == pytest.approx(want_r, rel=1e-6)
    assert np.nanargmax(np.abs(r)) == 2
    assert f"{want_peak2:.2f}" in text and f"{want_r:.2f}" in text
    assert "strongest at layer 3" in text
    for name in ["id_vs_layer", "overlap_vs_layer", "cosine_vs_layer", "id_vs_scale", "id_loss"]:
        png = tmp_path / "rep" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"]({name}.png)" in text


def test_each_figure_follows_its_own_data(tmp_path):
    """Same data -> identical figures; changing only cos_mean changes only the cosine figure."""
    arrays = _fake_run(tmp_path / "a", levels=[0, 1], seed=3)
    changed = dict(arrays, cos_mean=arrays["cos_mean"] * 0.5)
    os.makedirs(tmp_path / "b")
    results.save_results(str(tmp_path / "b"), changed)
    files.write_json(str(tmp_path / "b" / results.METADATA_FILE), {"model": "toy"})
    for run, out in [("a", "ra"), ("a", "ra2"), ("b", "rb")]:
        report.make_report([str(tmp_path / run)], str(tmp_path / out))

    def png(out, name):
        return (tmp_path / out / f"{name}.png").read_bytes()

    for name in ["id_vs_layer", "overlap_vs_layer", "cosine_vs_layer", "id_vs_scale", "id_loss"]:
        assert png("ra", name) == png("ra2", name), name
        if name != "cosine_vs_layer":
            assert png("ra", name) == png("rb", name), name
    assert png("ra", "cosine_vs_layer") != png("rb", "cosine_vs_layer")


def test_load_results_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results here"):
        results.load_results(str(tmp_path))


def test_report_of_the_observables_beyond_the_papers(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "all"
    arrays = _fake_run(folder, levels=[0], num_prompts=5, seed=5)
    rows, layers, t = len(arrays["loss"]), 5, 16
    nll = arrays["token_nll"]
    local = rng.normal(8, 1, (rows, layers, t))
    local[:, 3, 1:] = 5 + 2 * nll  # layer 4: local ID rises with the surprisal
    local[:, :, 7] = np.nan  # a duplicate token
    extra = {
        "reciprocity": rng.uniform(0.3, 0.9, (rows, layers, 8)),
        "info_imbalance_next": rng.uniform(0, 0.2, (rows, layers - 1, 2)),
        "info_imbalance_last": rng.uniform(0, 0.9, (rows, layers, 2)),
        "mle_id": rng.normal(9, 1, (rows, layers)),
        "tle_id": rng.normal(10, 1, (rows, layers)),
        "local_id": local,
    }
    results.save_results(str(folder), {**arrays, **extra}, "all")
    path = report.make_report([str(folder)], str(tmp_path / "rep"))
    text = open(path).read()
    (run,) = report.load_runs([str(folder)])
    pearson, spearman = local_id.local_id_correlations(run)
    lid = extra["local_id"][:, 3, 1:].astype(np.float16).astype(np.float64)  # stored as float16
    ok = np.isfinite(lid)
    want = np.corrcoef(lid[ok], nll[ok])[0, 1]
    assert pearson[3] == pytest.approx(want, rel=1e-6) and want > 0.99
    from scipy import stats

    assert spearman[3] == pytest.approx(stats.spearmanr(lid[ok], nll[ok])[0], rel=1e-9)
    assert spearman[3] > 0.9999
    assert np.nanargmax(np.abs(spearman)) == 3
    assert f"strongest at layer 4 (Spearman {spearman[3]:.3f}" in text
    rec = extra["reciprocity"][:, :, 7].mean(0)
    assert " | ".join(f"{v:.3f}" for v in rec) in text
    assert (
        "| MLE (Levina-Bickel) | " + " | ".join(f"{v:.2f}" for v in extra["mle_id"].mean(0)) in text
    )
    for name in ["reciprocity", "info_imbalance", "id_estimators", "local_id_nll"]:
        png = tmp_path / "rep" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name}.png)" in text
