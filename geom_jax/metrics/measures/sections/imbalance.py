"""Report sections of :mod:`geom_jax.metrics.measures.imbalance`: its figures and the
numbers its text states, read from loaded runs (NumPy and matplotlib, no JAX)."""

import numpy as np

from geom_jax import plotting


def plot(runs, path, **_):
    fig, axes = plotting.figure(2 * len(runs))
    for i, run in enumerate(runs):
        rows = run.rows(0)
        nxt = np.nanmean(run.arrays["info_imbalance_next"][rows], 0)
        x = np.arange(1, len(nxt) + 1) + 0.5
        ax = axes[2 * i]
        ax.plot(x, nxt[:, 0], "o-", ms=3, label="Delta(l -> l+1)")
        ax.plot(x, nxt[:, 1], "s--", ms=3, label="Delta(l+1 -> l)")
        ax.set(xlabel="layer l (pair l, l+1)", ylabel="information imbalance")
        ax.set_title(f"{run.label}: consecutive layers (structured)")
        ax.legend(fontsize=7)
        last = np.nanmean(run.arrays["info_imbalance_last"][rows], 0)
        x = np.arange(1, len(last) + 1)
        ax = axes[2 * i + 1]
        ax.plot(x, last[:, 0], "o-", ms=3, label="Delta(l -> last)")
        ax.plot(x, last[:, 1], "s--", ms=3, label="Delta(last -> l)")
        ax.set(xlabel="layer l", ylabel="information imbalance")
        ax.set_title(f"{run.label}: against the last layer (structured)")
        ax.legend(fontsize=7)
    return plotting.save(fig, path)


def text(run, **_):
    rows, lines = run.rows(0), []
    for field, what, a, b in (
        ("info_imbalance_next", "between consecutive layers", "l -> l+1", "l+1 -> l"),
        ("info_imbalance_last", "to the last layer", "l -> last", "last -> l"),
    ):
        v = np.nanmean(run.arrays[field][rows], 0)
        lines += ["", f"Information imbalance {what} (structured), Delta({a}) / Delta({b}):"]
        lines += plotting.layer_table("->", v[:, 0]) + [plotting.table_row("<-", v[:, 1])]
    return lines
