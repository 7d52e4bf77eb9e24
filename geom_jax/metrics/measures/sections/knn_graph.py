"""Report sections of :mod:`geom_jax.metrics.measures.knn_graph`: its figures and the
numbers its text states, read from loaded runs (NumPy and matplotlib, no JAX)."""

import numpy as np

from geom_jax import plotting

RECIPROCITY_KS = (1, 4, 16)


def plot_reciprocity(runs, path, **_):
    fig, axes = plotting.figure(len(runs))
    for ax, run in zip(axes, runs):
        rec = run.arrays["reciprocity"]
        for s in run.extremes:
            for k in [k for k in RECIPROCITY_KS if k <= rec.shape[-1]]:
                mean = np.nanmean(rec[run.rows(s), :, k - 1], 0)
                style = "-" if s == 0 else "--"
                label = f"k={k}, {plotting.level_label(s)}"
                ax.plot(np.arange(1, len(mean) + 1), mean, style, label=label)
        ax.set(xlabel="layer", ylabel="kNN-graph reciprocity", title=run.label, ylim=(0, 1))
        ax.legend(fontsize=7)
    return plotting.save(fig, path)


def reciprocity_text(run, **_):
    rec = np.nanmean(run.arrays["reciprocity"][run.rows(0)], 0)
    k = min(RECIPROCITY_KS[-1], rec.shape[-1])
    lines = ["", f"kNN-graph reciprocity (k = {k}), mean over the structured prompts:"]
    return lines + plotting.layer_table(f"k={k}", rec[:, k - 1])
