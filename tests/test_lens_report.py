"""The report's lens figures and numbers (issue 15, acceptance 5) on synthetic rows."""

import numpy as np
import pytest

from geom_jax import plots
from geom_jax.lens import report

scipy_stats = pytest.importorskip("scipy.stats")


def _run(num_prompts=12, num_layers=4, seed=0):
    rng = np.random.default_rng(seed)
    levels = np.tile([0, 2], num_prompts)
    p = 2 * num_prompts
    ids = rng.uniform(5, 20, (p, num_layers, 3))
    ids[:, :, 2] = np.nan  # an unsupported scale: the report uses the last finite one
    logit_ids = rng.uniform(2, 9, (p, 6))
    logit_ids[:, 5] = np.nan
    entropy = np.log(logit_ids[:, 4]) + rng.normal(0, 0.3, p)  # correlated by construction
    lens = rng.uniform(1, 8, (p, num_layers + 1))
    lens[:, -1] = entropy
    arrays = {
        "prompt_index": np.repeat(np.arange(num_prompts), 2),
        "shuffle_index": levels,
        "gride_ids": ids,
        "gride_n1": 2 ** np.arange(3),
        "loss": rng.uniform(1, 4, p),
        "lens_entropy": lens,
        "lens_free_energy": -rng.uniform(0, 2, (p, num_layers + 1)),
        "lens_energy": rng.uniform(0, 3, (p, num_layers + 1)),
        "logit_gride_ids": logit_ids,
    }
    return plots.Run("toy", arrays)


def test_spearman_numbers_match_scipy():
    run = _run()
    a = run.arrays
    rho = report.id_loss_spearman(run)
    for layer in range(4):
        want = scipy_stats.spearmanr(np.log(a["gride_ids"][:, layer, 0]), a["loss"])[0]
        assert rho[layer] == pytest.approx(want, abs=1e-12)
    want = scipy_stats.spearmanr(np.log(a["logit_gride_ids"][:, 4]), a["lens_entropy"][:, -1])[0]
    got = report.logit_id_entropy_spearman(run)
    assert got == pytest.approx(want, abs=1e-12) and got > 0.5


def test_figures_and_text(tmp_path):
    run = _run()
    figs = report.figures([run], str(tmp_path))
    assert set(figs) == {
        "Lens entropy, free energy and energy across layers",
        "Intrinsic dimension and uncertainty",
    }
    assert all((tmp_path / p.split("/")[-1]).stat().st_size > 1000 for p in figs.values())
    text = "\n".join(report.text(run))
    rho = report.logit_id_entropy_spearman(run)
    assert f"{rho:.3f} (the follow-up reports 0.60" in text
    mean_h = np.nanmean(run.arrays["lens_entropy"][run.rows(2)], 0)
    assert "| entropy H (nats) | " + " | ".join(f"{x:.2f}" for x in mean_h) in text
    assert "shuffled s=2" in text and "structured (s=0)" in text
