"""The report's lens figures and numbers (issue 15, acceptance 5) on synthetic rows."""

import numpy as np
import pytest

from geom_jax import plotting
from geom_jax.lens import report
from geom_jax.metrics.declare.observable import PER_PROMPT
from geom_jax.metrics.measures.sections import intrinsic_dimension
from geom_jax.report import make

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
    return plotting.Run("toy", arrays, PER_PROMPT)


def test_spearman_numbers_match_scipy():
    run = _run()
    a = run.arrays
    rho = intrinsic_dimension.id_loss_spearman(run)
    for layer in range(4):
        want = scipy_stats.spearmanr(np.log(a["gride_ids"][:, layer, 0]), a["loss"])[0]
        assert rho[layer] == pytest.approx(want, abs=1e-12)
    want = scipy_stats.spearmanr(np.log(a["logit_gride_ids"][:, 4]), a["lens_entropy"][:, -1])[0]
    got = report.logit_id_entropy_spearman(run)
    assert got == pytest.approx(want, abs=1e-12) and got > 0.5


def test_figures_and_text(tmp_path, monkeypatch):
    """The lens sections are chosen from the fields present, their figures plot the
    per-level means and the scatter of the rows, and the text states the numbers."""
    run = _run()
    titles = [s.title for s in make.sections_for([run])]
    assert "Lens entropy, free energy and energy across layers" in titles
    assert "Intrinsic dimension and uncertainty" in titles
    without = plotting.Run(
        "toy", {k: v for k, v in run.arrays.items() if "lens" not in k}, PER_PROMPT
    )
    assert "Lens entropy, free energy and energy across layers" not in [
        s.title for s in make.sections_for([without])
    ]
    drawn = []
    monkeypatch.setattr(plotting, "save", lambda fig, path: drawn.append(fig) or path)
    report.plot_lens_vs_layer([run], str(tmp_path / "lens.png"))
    report.plot_uncertainty_correlations([run], str(tmp_path / "unc.png"))
    lens_fig, unc_fig = drawn
    for ax, (field, _) in zip(lens_fig.axes, report.LENS_FIELDS):
        lines = ax.get_lines()
        assert len(lines) == len(run.extremes)
        for line, s in zip(lines, run.extremes):
            want = np.nanmean(run.arrays[field][run.rows(s)], 0)
            np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-12)
    rho_line = unc_fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(rho_line.get_ydata(), intrinsic_dimension.id_loss_spearman(run))
    points = np.concatenate([c.get_offsets() for c in unc_fig.axes[1].collections])
    rows = np.concatenate([run.rows(s) for s in run.levels])
    want = np.stack(
        [run.arrays["lens_entropy"][rows, -1], np.log(report.logit_range_id(run)[rows])], -1
    )
    np.testing.assert_allclose(points, want, rtol=1e-6)
    text = "\n".join(report.lens_text(run) + report.uncertainty_text(run))
    rho = report.logit_id_entropy_spearman(run)
    assert f"{rho:.3f} (the follow-up reports 0.60" in text
    mean_h = np.nanmean(run.arrays["lens_entropy"][run.rows(2)], 0)
    assert "| entropy H (nats) | " + " | ".join(f"{x:.2f}" for x in mean_h) in text
    assert "shuffled s=2" in text and "structured (s=0)" in text
