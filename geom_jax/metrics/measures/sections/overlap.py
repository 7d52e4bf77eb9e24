"""Report sections of :mod:`geom_jax.metrics.measures.overlap`: its figures and the
numbers its text states, read from loaded runs (NumPy and matplotlib, no JAX)."""

import numpy as np

from geom_jax import plotting

OVERLAP_KS = (1, 2, 4)


def plot(runs, path, **_):
    fig, axes = plotting.figure(len(runs))
    for ax, run in zip(axes, runs):
        for s in run.extremes:
            for k in OVERLAP_KS:
                ov = run.arrays["overlap"][run.rows(s), :, k - 1]
                style = "-" if s == 0 else "--"
                x = np.arange(1, ov.shape[1] + 1) + 0.5
                ax.plot(x, np.nanmean(ov, 0), style, label=f"k={k}, {plotting.level_label(s)}")
        ax.set(
            xlabel="layer l (overlap of l and l+1)", ylabel="chi_k", title=run.label, ylim=(0, 1)
        )
        ax.legend(fontsize=7)
    return plotting.save(fig, path)
