"""Report sections of :mod:`geom_jax.metrics.measures.cosine`: its figures and the
numbers its text states, read from loaded runs (NumPy and matplotlib, no JAX)."""

import numpy as np

from geom_jax import plotting


def plot(runs, path, **_):
    fig, axes = plotting.figure(len(runs))
    for ax, run in zip(axes, runs):
        for color, s in zip(plotting.colours(len(run.levels)), run.levels):
            cos = run.arrays["cos_mean"][run.rows(s)]
            plotting.band(ax, np.arange(cos.shape[1]), cos, plotting.level_label(s), color)
        ax.set(xlabel="layer (0 = embedding)", ylabel="mean cosine similarity", title=run.label)
        ax.legend(fontsize=7)
    return plotting.save(fig, path)
