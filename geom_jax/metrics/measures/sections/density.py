"""Report sections of :mod:`geom_jax.metrics.measures.density` and
:mod:`geom_jax.metrics.measures.adp`: point density and density-peak clusters against
layer, and the numbers their texts state, read from loaded runs (NumPy and matplotlib,
no JAX)."""

import numpy as np

from geom_jax import plotting

SCORES = (("adp_ari", "ARI"), ("adp_ami", "AMI"))
"""The agreement fields, drawn and stated where a run holds them."""


def _layers(values):
    return np.arange(1, values.shape[1] + 1)


def _level_rows(run, field):
    """(level, its rows' values [rows, L] as float) for each shuffle level of the run."""
    return [(s, np.asarray(run.arrays[field][run.rows(s)], np.float64)) for s in run.levels]


def plot_density(runs, path, **_):
    """Mean PAk log density against layer (band: its spread over rows), median k* on a
    second axis, one panel per model, a line per shuffle level."""
    fig, axes = plotting.figure(len(runs))
    for ax, run in zip(axes, runs):
        twin = ax.twinx() if "pak_kstar_median" in run.arrays else None
        colours = plotting.colours(len(run.levels))
        for color, (s, v) in zip(colours, _level_rows(run, "pak_log_density_mean")):
            plotting.band(ax, _layers(v), v, plotting.level_label(s), color=color)
            if twin is not None:
                k = np.asarray(run.arrays["pak_kstar_median"][run.rows(s)], np.float64)
                twin.plot(_layers(k), np.nanmean(k, 0), color=color, ls=":", lw=1.2)
        ax.set(xlabel="layer", ylabel="mean PAk log density", title=run.label)
        if twin is not None:
            twin.set_ylabel("median k* (dotted)")
        ax.legend(fontsize=7)
    return plotting.save(fig, path)


def density_text(run, **_):
    lines = ["", "Point density (PAk, DADApy's definition), mean over rows:"]
    rows = (
        ("pak_log_density_mean", "mean log density", "{:.2f}"),
        ("pak_log_density_std", "its spread over points", "{:.2f}"),
        ("pak_kstar_median", "median k*", "{:.1f}"),
        ("knn_log_density_mean", "mean k-NN log density", "{:.2f}"),
        ("density_id", "ID used (TwoNN)", "{:.2f}"),
    )
    first = True
    for s in run.levels:
        for field, label, fmt in rows:
            if field not in run.arrays:
                continue
            v = np.nanmean(np.asarray(run.arrays[field][run.rows(s)], np.float64), 0)
            table = plotting.layer_table(f"{plotting.level_label(s)}: {label}", v, fmt)
            lines += table if first else [table[-1]]
            first = False
    return lines


def plot_clusters(runs, path, **_):
    """Number of ADP clusters and the core fraction against layer; ARI / AMI against
    the labels where present (one panel per model, structured rows)."""
    fig, axes = plotting.figure(len(runs))
    for ax, run in zip(axes, runs):
        right = ax.twinx()
        if "adp_clusters" in run.arrays:
            v = np.asarray(run.arrays["adp_clusters"][run.rows(0)], np.float64)
            plotting.band(ax, _layers(v), v, "clusters", color="k")
        fractions = (("adp_core_fraction", "core fraction"),) + SCORES
        for color, (field, label) in zip(plotting.colours(len(fractions)), fractions):
            if field in run.arrays:
                v = np.asarray(run.arrays[field][run.rows(0)], np.float64)
                plotting.band(right, _layers(v), v, label, color=color)
        ax.set(xlabel="layer", ylabel="ADP clusters", title=f"{run.label}: structured")
        right.set(ylabel="fraction / score", ylim=(-0.05, 1.05))
        handles = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7)
    return plotting.save(fig, path)


def clusters_text(run, **_):
    rows = (
        ("adp_clusters", "clusters", "{:.1f}"),
        ("adp_core_fraction", "core fraction", "{:.3f}"),
        ("adp_largest_fraction", "largest cluster's share", "{:.3f}"),
        ("adp_ari", "ARI against the labels", "{:.3f}"),
        ("adp_ami", "AMI against the labels", "{:.3f}"),
    )
    present = [r for r in rows if r[0] in run.arrays]
    if not present:
        return []
    lines = ["", "Advanced Density Peaks clusters, mean over rows:"]
    for s in run.levels:
        for i, (field, label, fmt) in enumerate(present):
            v = np.nanmean(np.asarray(run.arrays[field][run.rows(s)], np.float64), 0)
            table = plotting.layer_table(f"{plotting.level_label(s)}: {label}", v, fmt)
            lines += table if (i == 0 and s == run.levels[0]) else [table[-1]]
    if "adp_ari" in run.arrays:
        ari = np.nanmean(np.asarray(run.arrays["adp_ari"][run.rows(0)], np.float64), 0)
        if np.any(np.isfinite(ari)):
            best = int(np.nanargmax(ari))
            lines += ["", f"Highest ARI (structured): {ari[best]:.3f} at layer {best + 1}."]
    return lines
