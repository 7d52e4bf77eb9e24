"""Report sections of :mod:`geom_jax.metrics.measures.label_overlap`: its figures and the
numbers its text states, read from loaded runs (NumPy and matplotlib, no JAX)."""

import numpy as np

from geom_jax import plotting


def plot(runs, path, **_):
    fig, axes = plotting.figure(len(runs))
    for ax, run in zip(axes, runs):
        k = run.arrays["label_overlap"].shape[-1]
        for color, s in zip(plotting.colours(len(run.levels)), run.levels):
            v = run.arrays["label_overlap"][run.rows(s), :, k - 1]
            x = np.arange(1, v.shape[1] + 1)
            ax.errorbar(
                x,
                np.nanmean(v, 0),
                yerr=np.nanstd(v, 0),
                color=color,
                capsize=2,
                marker="o",
                ms=3,
                lw=1.4,
                label=plotting.level_label(s),
            )
        ax.set(xlabel="layer", ylabel=f"label overlap (k={k})", title=run.label, ylim=(0, 1))
        ax.legend(fontsize=7)
    return plotting.save(fig, path)


def text(run, **_):
    v = run.arrays["label_overlap"]
    k = v.shape[-1]
    lines = ["", f"Label overlap (k = {k}, class-size weighted), mean over partitions:"]
    for i, s in enumerate(run.levels):
        row = np.nanmean(v[run.rows(s), :, k - 1], 0)
        table = plotting.layer_table(plotting.level_label(s), row)
        lines += table if i == 0 else [table[-1]]
    return lines
