"""The report sections of the lens and logit_id observables: the follow-up's
entropy, free energy and expected energy against layer (structured vs
shuffled), and Spearman's rho between per-prompt log ID and loss per layer
and between log logit-ID and contextual entropy (Cheng et al., arXiv
2405.15471, revised; on Llama-3-8B they report rho = 0.60 for the latter)."""

from __future__ import annotations

import numpy as np

from geom_jax import plotting
from geom_jax.metrics.declare.observable import ReportSection
from geom_jax.metrics.measures.sections.intrinsic_dimension import id_loss_spearman

LENS_FIELDS = (
    ("lens_entropy", "entropy H (nats)"),
    ("lens_free_energy", "free energy F"),
    ("lens_energy", "expected energy E"),
)


def logit_range_id(run: plotting.Run) -> np.ndarray:
    """[P] GRIDE ID of the logits at the largest supported scale (n2 = range, 64 by default)."""
    ids = run.arrays["logit_gride_ids"]
    last = np.where(np.isfinite(ids).any(0))[0]
    return ids[:, last[-1]] if len(last) else np.full(len(ids), np.nan)


def logit_id_entropy_spearman(run: plotting.Run) -> float:
    """Spearman rho between log logit-ID and contextual entropy (the model's mean
    predictive entropy over the prompt, lens_entropy at the last layer), all rows."""
    return plotting.spearman(np.log(logit_range_id(run)), run.arrays["lens_entropy"][:, -1])


def plot_lens_vs_layer(runs, path: str, **_) -> str:
    """Entropy, free energy and energy against hidden state 0..L, structured vs shuffled."""
    fig, axes = plotting.figure(3 * len(runs))
    for i, run in enumerate(runs):
        for j, (field, label) in enumerate(LENS_FIELDS):
            ax = axes[3 * i + j]
            for s in run.extremes:
                v = run.arrays[field][run.rows(s)]
                plotting.band(ax, np.arange(v.shape[1]), v, plotting.level_label(s))
            ax.set(xlabel="hidden state (0 = embedding)", ylabel=label, title=run.label)
            ax.legend(fontsize=7)
    return plotting.save(fig, path)


def plot_uncertainty_correlations(runs, path: str, scale: int = 0, **_) -> str:
    """Spearman rho (log ID, loss) per layer, and log logit-ID against contextual entropy."""
    fig, axes = plotting.figure(2 * len(runs))
    for i, run in enumerate(runs):
        ax = axes[2 * i]
        if "gride_ids" in run.arrays:
            rho = id_loss_spearman(run, scale)
            ax.plot(np.arange(1, len(rho) + 1), rho, "o-", ms=3)
            ax.axhline(0, color="grey", lw=0.8)
        ax.set(xlabel="layer", ylabel="Spearman rho (log ID, loss)", title=run.label)
        ax = axes[2 * i + 1]
        plotting.real_x_axis(ax)  # entropy is not an integer axis
        if "logit_gride_ids" in run.arrays and "lens_entropy" in run.arrays:
            for s in run.levels:
                rows = run.rows(s)
                ax.scatter(
                    run.arrays["lens_entropy"][rows, -1],
                    np.log(logit_range_id(run)[rows]),
                    s=12,
                    label=plotting.level_label(s),
                )
            ax.set_title(f"rho = {logit_id_entropy_spearman(run):.2f}")
            ax.legend(fontsize=7)
        ax.set(xlabel="contextual entropy (nats)", ylabel="log logit-ID (GRIDE, range 64)")
    return plotting.save(fig, path)


def lens_text(run: plotting.Run, **_) -> list[str]:
    """The lens statistics per hidden state, structured and most shuffled."""
    a, lines = run.arrays, []
    for s in run.extremes:
        rows = run.rows(s)
        lines += ["", f"Lens statistics, mean over the {len(rows)} rows {plotting.level_label(s)}:"]
        n = a["lens_entropy"].shape[1]
        lines += [
            "",
            "| hidden state | " + " | ".join(str(i) for i in range(n)) + " |",
            "| --- |" + " --- |" * n,
        ]
        for field, label in LENS_FIELDS:
            lines.append(plotting.table_row(label, np.nanmean(a[field][rows], 0), "{:.2f}"))
    return lines


def uncertainty_text(run: plotting.Run, **_) -> list[str]:
    """Spearman rho of log logit-ID with the contextual entropy (the ID-loss one is
    in the GRIDE section)."""
    a, lines = run.arrays, []
    if "logit_gride_ids" in a and "lens_entropy" in a:
        lines += [
            "",
            "Spearman rho between log logit-ID (GRIDE at the largest scale) and contextual "
            f"entropy over all {len(a['lens_entropy'])} rows: "
            f"{logit_id_entropy_spearman(run):.3f} (the follow-up reports 0.60 on Llama-3-8B).",
        ]
    return lines


LENS_SECTION = ReportSection(
    "Lens entropy, free energy and energy across layers",
    figure=plot_lens_vs_layer,
    text=lens_text,
    needs=("lens_entropy", "lens_free_energy", "lens_energy"),
    file="lens_vs_layer.png",
)

UNCERTAINTY_SECTION = ReportSection(
    "Intrinsic dimension and uncertainty",
    figure=plot_uncertainty_correlations,
    text=uncertainty_text,
    file="id_uncertainty.png",
)
"""Shared by lens and logit_id: drawn once when the runs hold either's fields."""
