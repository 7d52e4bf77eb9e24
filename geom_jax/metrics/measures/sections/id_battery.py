"""Report section of :mod:`geom_jax.metrics.measures.id_battery`: every intrinsic-dimension
estimator of a run against layer on one figure, and each one's peak layer and value, read
from loaded runs (NumPy and matplotlib, no JAX)."""

import numpy as np

from geom_jax import plotting

BATTERY = (
    ("binomial_id", "binomial (DADApy)"),
    ("mada_id", "MADA"),
    ("mom_id", "MOM"),
    ("corrint_id", "CorrInt"),
    ("ess_id", "ESS"),
    ("fishers_id", "FisherS"),
    ("lpca_id", "lPCA"),
    ("phd_id", "PHD"),
)
"""The battery's fields, in the figure's order."""

OTHERS = (
    ("pca_id", "PCA (components for pca_variance)"),
    ("twonn", "TwoNN"),
    ("gride_ids", "GRIDE (n1=1)"),
    ("mle_id", "MLE (Levina-Bickel)"),
    ("tle_id", "TLE"),
)
"""Estimators of other observables drawn beside the battery when the run has them."""


def curves(run, field):
    """Estimates [rows, L] of the structured level (GRIDE: its first scale)."""
    v = run.arrays[field][run.rows(0)]
    return v[..., 0] if v.ndim == 3 else v


def present(run):
    """(field, label) of every estimator the run holds with a finite value in its
    structured rows, the battery first."""
    return [
        (f, label)
        for f, label in BATTERY + OTHERS
        if f in run.arrays and np.isfinite(curves(run, f)).any()
    ]


def peaks(run):
    """(label, peak layer (1-based), value at the peak) per estimator present, from the
    mean over the structured rows of its finite values."""
    out = []
    for field, label in present(run):
        values = curves(run, field).astype(np.float64)
        finite = np.isfinite(values)
        count = finite.sum(axis=0)
        mean = np.where(finite, values, 0.0).sum(axis=0) / np.maximum(count, 1)
        mean = np.where(count > 0, mean, np.nan)
        layer = int(np.nanargmax(mean))
        out.append((label, layer + 1, float(mean[layer])))
    return out


def plot(runs, path, **_):
    """Every estimator against layer, one panel per run (mean over the structured rows,
    band +- std)."""
    fig, axes = plotting.figure(len(runs))
    for ax, run in zip(axes, runs):
        for color, (field, label) in zip(plotting.colours(len(present(run))), present(run)):
            values = curves(run, field)
            plotting.band(ax, np.arange(1, values.shape[1] + 1), values, label, color=color)
        ax.set(xlabel="layer", ylabel="intrinsic dimension", title=run.label)
        ax.legend(fontsize=6, ncol=2)
    return plotting.save(fig, path)


def text(run, **_):
    found = peaks(run)
    if not found:
        return []
    lines = ["", "Intrinsic dimension by estimator (structured rows): peak layer and value.", ""]
    lines += ["| estimator | peak layer | ID at the peak |", "| --- | --- | --- |"]
    lines += [f"| {label} | {layer} | {value:.2f} |" for label, layer, value in found]
    return lines
