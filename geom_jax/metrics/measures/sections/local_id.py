"""Report sections of :mod:`geom_jax.metrics.measures.local_id`: its figures and the
numbers its text states, read from loaded runs (NumPy and matplotlib, no JAX)."""

import numpy as np

from geom_jax import plotting

ID_ESTIMATORS = (
    ("gride_ids", "GRIDE (n1=1)"),
    ("twonn", "TwoNN"),
    ("mle_id", "MLE (Levina-Bickel)"),
    ("tle_id", "TLE"),
    ("pca_id", "PCA (components for pca_variance)"),
)


MAX_SCATTER = 4000


def estimates(run, field):
    v = run.arrays[field][run.rows(0)]
    return v[..., 0] if v.ndim == 3 else v


def plot_estimators(runs, path, **_):
    """Every ID estimator against layer on one panel per model (structured rows)."""
    fig, axes = plotting.figure(len(runs))
    for ax, run in zip(axes, runs):
        for field, label in ID_ESTIMATORS:
            if field in run.arrays:
                values = estimates(run, field)
                plotting.band(ax, np.arange(1, values.shape[1] + 1), values, label)
        ax.set(xlabel="layer", ylabel="intrinsic dimension", title=f"{run.label}: structured")
        ax.legend(fontsize=7)
    return plotting.save(fig, path)


def estimators_text(run, **_):
    present = [(f, label) for f, label in ID_ESTIMATORS if f in run.arrays]
    if len(present) < 2:
        return []
    num_layers = run.arrays[present[0][0]].shape[1]
    lines = ["", "Intrinsic dimension by estimator, mean over the structured prompts:", ""]
    lines += ["| estimator | " + " | ".join(str(i + 1) for i in range(num_layers)) + " |"]
    lines += ["| --- |" + " --- |" * num_layers]
    for field, label in present:
        lines.append(plotting.table_row(label, np.nanmean(estimates(run, field), 0), "{:.2f}"))
    return lines


def local_id_pairs(run, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(local ID, surprisal) of every token t >= 1 of the structured rows at ``layer``
    (0-based over transformer layers): token t's surprisal is token_nll[t - 1]."""
    rows = run.rows(0)
    lid = run.arrays["local_id"][rows, layer, 1:]
    nll = run.arrays["token_nll"][rows]
    ok = np.isfinite(lid) & (nll > 0)
    return lid[ok].astype(np.float64), nll[ok].astype(np.float64)


def local_id_correlations(run) -> tuple[np.ndarray, np.ndarray]:
    """[L] Pearson and Spearman correlation between each token's local ID (MLE)
    and its surprisal, pooled over the structured prompts' tokens."""
    num_layers = run.arrays["local_id"].shape[1]
    pearson, spearman = np.full(num_layers, np.nan), np.full(num_layers, np.nan)
    for layer in range(num_layers):
        lid, nll = local_id_pairs(run, layer)
        pearson[layer] = plotting.pearson(lid, nll)
        spearman[layer] = plotting.pearson(plotting.ranks(lid), plotting.ranks(nll))
    return pearson, spearman


def plot_surprisal(runs, path, **_):
    """Per layer Pearson / Spearman r (token local ID, surprisal), then a scatter
    at the layer of strongest |Spearman r|."""
    fig, axes = plotting.figure(2 * len(runs))
    for i, run in enumerate(runs):
        pearson, spearman = local_id_correlations(run)
        x = np.arange(1, len(pearson) + 1)
        ax = axes[2 * i]
        ax.plot(x, pearson, "o-", ms=3, label="Pearson")
        ax.plot(x, spearman, "s--", ms=3, label="Spearman")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xlabel="layer", ylabel="r (token local ID, surprisal)", title=run.label)
        ax.legend(fontsize=7)
        ax = axes[2 * i + 1]
        if np.all(np.isnan(spearman)):
            ax.set_title("too few tokens for a correlation")
            continue
        layer = int(np.nanargmax(np.abs(spearman)))
        lid, nll = local_id_pairs(run, layer)
        if len(lid) > MAX_SCATTER:
            pick = np.random.default_rng(0).choice(len(lid), MAX_SCATTER, replace=False)
            lid, nll = lid[pick], nll[pick]
        ax.scatter(lid, nll, s=3, alpha=0.4)
        ax.set(
            xlabel=f"token local ID (MLE) at layer {layer + 1}",
            ylabel="surprisal (nats)",
            title=f"layer {layer + 1}: Spearman {spearman[layer]:.2f}, "
            f"Pearson {pearson[layer]:.2f}",
        )
    return plotting.save(fig, path)


def surprisal_text(run, **_):
    pearson, spearman = local_id_correlations(run)
    if np.all(np.isnan(spearman)):
        return []
    best = int(np.nanargmax(np.abs(spearman)))
    lines = [
        "",
        "Correlation between each token's local ID (MLE) and its surprisal, pooled "
        f"over the structured prompts' tokens: strongest at layer {best + 1} "
        f"(Spearman {spearman[best]:.3f}, Pearson {pearson[best]:.3f}).",
    ]
    lines += plotting.layer_table("Pearson", pearson, "{:.2f}")
    return lines + [plotting.table_row("Spearman", spearman, "{:.2f}")]
