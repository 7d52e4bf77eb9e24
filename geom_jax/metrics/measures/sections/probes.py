"""Report sections of :mod:`geom_jax.metrics.measures.probes`: probe accuracy against
layer beside the run's intrinsic-dimension curve (Cheng et al., ICLR 2025, tie the ID
peak to what linear probes decode), read from loaded runs (NumPy and matplotlib, no
JAX)."""

import numpy as np

from geom_jax import plotting


def id_curve(run):
    """(ID [rows, L], its name) of a run: GRIDE at its largest scale finite in every
    cloud and layer, else TwoNN; None when the run has neither."""
    if "gride_ids" in run.arrays:
        ids = run.arrays["gride_ids"]
        finite = np.flatnonzero(np.isfinite(ids).all(axis=(0, 1)))
        if finite.size:
            j = int(finite[-1])
            return ids[..., j], f"GRIDE (n1={2**j})"
    if "twonn" in run.arrays:
        return run.arrays["twonn"], "TwoNN"
    return None


def _peak(values):
    """0-based layer of the largest mean over rows, or None when all are NaN."""
    mean = np.nanmean(values, 0) if np.isfinite(values).any() else None
    return None if mean is None else int(np.nanargmax(mean))


def plot(runs, path, **_):
    """Per run: the accuracy per level (mean over partitions, bars: the mean spread over
    the folds) and, dashed on a twin axis, the ID curve of the same level."""
    fig, axes = plotting.figure(len(runs))
    for ax, run in zip(axes, runs):
        curve = id_curve(run)
        twin = ax.twinx() if curve is not None else None
        for color, s in zip(plotting.colours(len(run.levels)), run.levels):
            rows = run.rows(s)
            acc = run.arrays["probe_accuracy"][rows]
            x = np.arange(1, acc.shape[1] + 1)
            ax.errorbar(
                x,
                np.nanmean(acc, 0),
                yerr=np.nanmean(run.arrays["probe_accuracy_std"][rows], 0),
                color=color,
                capsize=2,
                marker="o",
                ms=3,
                lw=1.4,
                label=f"{plotting.level_label(s)}: probe",
            )
            if twin is not None:
                ids, name = curve
                twin.plot(x, np.nanmean(ids[rows], 0), "--", color=color, lw=1.1, label=name)
        ax.set(xlabel="layer", ylabel="probe accuracy (held-out)", title=run.label, ylim=(0, 1))
        ax.legend(fontsize=7, loc="lower left")
        if twin is not None:
            twin.set_ylabel(f"intrinsic dimension, {curve[1]} (dashed)")
    return plotting.save(fig, path)


def text(run, **_):
    acc = run.arrays["probe_accuracy"]
    curve = id_curve(run)
    lines = [
        "",
        "Linear probe accuracy (cross-validated on the row labels), mean over partitions:",
        "",
    ]
    for s in run.levels:
        rows = run.rows(s)
        peak = _peak(acc[rows])
        if peak is None:
            lines.append(f"- {plotting.level_label(s)}: no finite accuracy.")
            continue
        mean = np.nanmean(acc[rows], 0)
        line = f"- {plotting.level_label(s)}: accuracy peaks at layer {peak + 1} ({mean[peak]:.3f})"
        if curve is not None:
            id_peak = _peak(curve[0][rows])
            if id_peak is not None:
                line += f"; the ID ({curve[1]}) peaks at layer {id_peak + 1}"
        lines.append(line + ".")
    for i, s in enumerate(run.levels):
        table = plotting.layer_table(plotting.level_label(s), np.nanmean(acc[run.rows(s)], 0))
        lines += table if i == 0 else [table[-1]]
    return lines
