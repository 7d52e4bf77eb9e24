"""Report sections of :mod:`geom_jax.metrics.measures.intrinsic_dimension`: its figures and the
numbers its text states, read from loaded runs (NumPy and matplotlib, no JAX)."""

import numpy as np

from geom_jax import plotting


def _ids(run: plotting.Run, scale: int, rows) -> np.ndarray:
    return run.arrays["gride_ids"][rows, :, scale]


def peak_id(run: plotting.Run, shuffle_index: int, scale: int = 0, prompts=None) -> np.ndarray:
    """[prompts] maximum over layers of the GRIDE ID at ``scale``."""
    return np.nanmax(_ids(run, scale, run.rows(shuffle_index, prompts)), axis=1)


def pearson_by_layer(run: plotting.Run, scale: int = 0) -> np.ndarray:
    """[L] Pearson r between GRIDE ID and loss across structured prompts."""
    rows = run.rows(0)
    ids = _ids(run, scale, rows)
    loss = run.arrays["loss"][rows]
    if len(rows) < 3:
        return np.full(ids.shape[1], np.nan)
    ids_c = ids - ids.mean(0)
    loss_c = loss - loss.mean()
    denom = np.sqrt((ids_c**2).sum(0) * (loss_c**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ids_c * loss_c[:, None]).sum(0) / denom


def id_loss_spearman(run: plotting.Run, scale: int = 0) -> np.ndarray:
    """[L] Spearman rho between log GRIDE ID (at ``scale``) and loss over all rows."""
    ids, loss = run.arrays["gride_ids"][:, :, scale], run.arrays["loss"]
    return np.asarray(
        [plotting.spearman(np.log(ids[:, layer]), loss) for layer in range(ids.shape[1])]
    )


def headline(run: plotting.Run, scale: int = 0) -> dict:
    """The numbers the report states for one model: per shuffle level the mean peak ID,
    its layer and the loss; for prompts run structured and most shuffled, the change of
    the peak; per layer the ID-loss correlation."""
    levels = run.levels
    out = {
        "num_prompts": int(len(np.unique(run.arrays["prompt_index"]))),
        "peak_id": {s: float(np.mean(peak_id(run, s, scale))) for s in levels},
        "peak_layer": {
            s: int(np.nanargmax(np.nanmean(_ids(run, scale, run.rows(s)), 0))) + 1 for s in levels
        },
        "loss": {s: float(np.mean(run.arrays["loss"][run.rows(s)])) for s in levels},
        "pearson": pearson_by_layer(run, scale),
    }
    if len(levels) > 1:
        top = levels[-1]
        paired = np.intersect1d(
            run.arrays["prompt_index"][run.rows(0)], run.arrays["prompt_index"][run.rows(top)]
        )
        out["paired_prompts"] = len(paired)
        out["paired_peak_id"] = {
            s: float(np.mean(peak_id(run, s, scale, paired))) for s in (0, top)
        }
        out["peak_ratio"] = out["paired_peak_id"][top] / out["paired_peak_id"][0]
        out["paired_loss"] = {
            s: float(np.mean(run.arrays["loss"][run.rows(s, paired)])) for s in (0, top)
        }
    return out


def plot_id_vs_layer(runs, path, scale=0, **_):
    fig, axes = plotting.figure(len(runs))
    for ax, run in zip(axes, runs):
        for color, s in zip(plotting.colours(len(run.levels)), run.levels):
            ids = _ids(run, scale, run.rows(s))
            plotting.band(ax, np.arange(1, ids.shape[1] + 1), ids, plotting.level_label(s), color)
        n1 = int(run.arrays["gride_n1"][scale])
        ax.set(xlabel="layer", ylabel=f"GRIDE ID (n1={n1}, n2={2 * n1})", title=run.label)
        ax.legend(fontsize=7)
    return plotting.save(fig, path)


def plot_id_vs_scale(runs, path, **_):
    fig, axes = plotting.figure(len(runs))
    for ax, run in zip(axes, runs):
        ids = run.arrays["gride_ids"]
        num_layers = ids.shape[1]
        layers = sorted({1, num_layers // 4, num_layers // 2, 3 * num_layers // 4, num_layers})
        for s in run.extremes:
            rows = run.rows(s)
            for layer in layers:
                scales = np.nanmean(run.arrays["gride_scales"][rows, layer - 1], 0)
                d = np.nanmean(ids[rows, layer - 1], 0)
                style = "o-" if s == 0 else "x--"
                ax.plot(scales, d, style, ms=3, label=f"layer {layer}, {plotting.level_label(s)}")
        ax.set(xscale="log", xlabel="GRIDE scale (mean neighbour distance)", ylabel="ID")
        ax.set_title(run.label)
        ax.legend(fontsize=6, ncol=2)
    return plotting.save(fig, path)


def plot_id_loss(runs, path, scale=0, **_):
    """Pearson r per layer, then ID-loss scatters at the layer of strongest |r|
    and, where it differs, at the layer of highest (positive) r."""
    fig, axes = plotting.figure(3 * len(runs))
    for i, run in enumerate(runs):
        r = pearson_by_layer(run, scale)
        ax = axes[3 * i]
        ax.plot(np.arange(1, len(r) + 1), r, "o-", ms=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xlabel="layer", ylabel="Pearson r (ID, loss)", title=f"{run.label}: structured")
        if np.all(np.isnan(r)):
            axes[3 * i + 1].set_title("too few prompts for a correlation")
            axes[3 * i + 2].axis("off")
            continue
        layers = list(dict.fromkeys([int(np.nanargmax(np.abs(r))), int(np.nanargmax(r))]))
        rows = run.rows(0)
        for j, ax in enumerate(axes[3 * i + 1 : 3 * i + 3]):
            if j >= len(layers):
                ax.axis("off")
                continue
            layer = layers[j]
            ax.scatter(run.arrays["gride_ids"][rows, layer, scale], run.arrays["loss"][rows], s=14)
            ax.set(
                xlabel=f"GRIDE ID at layer {layer + 1}",
                ylabel="loss (nats/token)",
                title=f"layer {layer + 1}: r = {r[layer]:.2f}",
            )
    return plotting.save(fig, path)


def headline_text(run, scale=0, **_):
    h = headline(run, scale)
    n1 = int(run.arrays["gride_n1"][scale])
    lines = [
        f"{h['num_prompts']} prompts.",
        "",
        f"| shuffle level s | rows | mean peak GRIDE ID (n1={n1}) | peak layer | mean loss |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in run.levels:
        lines.append(
            f"| {s} | {len(run.rows(s))} | {h['peak_id'][s]:.2f} | {h['peak_layer'][s]} "
            f"| {h['loss'][s]:.3f} |"
        )
    if "peak_ratio" in h:
        top = run.levels[-1]
        pk, ls = h["paired_peak_id"], h["paired_loss"]
        lines += [
            "",
            f"**Findings** (the {h['paired_prompts']} prompts run both structured and at "
            f"s={top}). The mean peak GRIDE ID over layers is "
            f"{100 * (h['peak_ratio'] - 1):+.1f}%"
            f" higher at s={top} than structured ({pk[top]:.2f} vs {pk[0]:.2f}); the mean "
            f"loss is {ls[top]:.3f} nats at s={top} vs {ls[0]:.3f} structured "
            f"({'higher' if ls[top] > ls[0] else 'not higher'}).",
        ]
    r = h["pearson"]
    if not np.all(np.isnan(r)):
        best, top = int(np.nanargmax(np.abs(r))), int(np.nanargmax(r))
        positive = int(np.sum(r > 0))
        lines += [
            "",
            f"Pearson r between GRIDE ID (n1={n1}) and loss across the "
            f"{len(run.rows(0))} structured prompts, per layer: strongest at layer "
            f"{best + 1} (r = {r[best]:.3f}); highest at layer {top + 1} (r = {r[top]:.3f}); "
            f"positive (higher loss, higher ID) at {positive} of {len(r)} layers.",
        ]
        lines += plotting.layer_table("r", r, "{:.2f}")
    rho = id_loss_spearman(run, scale)
    if not np.all(np.isnan(rho)):
        best = int(np.nanargmax(np.abs(rho)))
        lines += [
            "",
            f"Spearman rho between log GRIDE ID and loss over all {len(run.arrays['loss'])} "
            f"rows: strongest at layer {best + 1} (rho = {rho[best]:.3f}).",
        ]
        lines += plotting.layer_table("rho", rho, "{:.2f}")
    return lines


def plateau_scale(run: plotting.Run) -> int:
    """The GRIDE scale where the structured clouds' ID curve is flattest: the j that
    minimises the mean over layers of |ID(j + 1) - ID(j)| / ID(j) (Cheng et al. read
    the ID where the curve against scale plateaus); 0 with a single scale."""
    ids = np.nanmean(run.arrays["gride_ids"][run.rows(0)], 0)  # [L, S]
    if ids.shape[-1] < 2:
        return 0
    with np.errstate(invalid="ignore", divide="ignore"):
        step = np.nanmean(np.abs(np.diff(ids, axis=-1)) / ids[:, :-1], 0)
    return int(np.nanargmin(step)) if np.isfinite(step).any() else 0


def cloud_headline(run: plotting.Run, scale: int) -> dict:
    """Per shuffle level (structured first): the peak layer of the mean ID over
    partitions at ``scale``, the peak ID's mean and standard deviation over
    partitions, and the number of partitions."""
    out = {}
    for s in run.levels:
        ids = _ids(run, scale, run.rows(s))  # [partitions, L]
        mean = np.nanmean(ids, 0)
        peak = int(np.nanargmax(mean))
        out[s] = {
            "peak_layer": peak + 1,
            "peak_id": float(mean[peak]),
            "peak_std": float(np.nanstd(ids[:, peak])),
            "partitions": len(ids),
        }
    return out


def plot_clouds(runs, path, **_):
    """ID against layer at the first and at the plateau scale (structured vs shuffled,
    +- std over partitions), and ID against scale at a few layers."""
    fig, axes = plotting.figure(3 * len(runs))
    for i, run in enumerate(runs):
        plateau = plateau_scale(run)
        for ax, scale in zip(axes[3 * i : 3 * i + 2], (0, plateau)):
            for color, s in zip(plotting.colours(len(run.levels)), run.levels):
                ids = _ids(run, scale, run.rows(s))
                x = np.arange(1, ids.shape[1] + 1)
                mean, std = np.nanmean(ids, 0), np.nanstd(ids, 0)
                ax.errorbar(
                    x,
                    mean,
                    yerr=std,
                    color=color,
                    capsize=2,
                    lw=1.4,
                    ms=3,
                    marker="o",
                    label=plotting.level_label(s),
                )
            n1 = int(run.arrays["gride_n1"][scale])
            ax.set(xlabel="layer", ylabel=f"GRIDE ID (n1={n1})", title=run.label)
            ax.legend(fontsize=7)
        ax = axes[3 * i + 2]
        num_layers = run.arrays["gride_ids"].shape[1]
        for layer in sorted({1, num_layers // 2, num_layers}):
            for s in run.extremes:
                rows = run.rows(s)
                ax.plot(
                    run.arrays["gride_n1"],
                    np.nanmean(run.arrays["gride_ids"][rows, layer - 1], 0),
                    "o-" if s == 0 else "x--",
                    ms=3,
                    label=f"layer {layer}, {plotting.level_label(s)}",
                )
        ax.set(xscale="log", xlabel="GRIDE n1", ylabel="ID", title=f"{run.label}: ID vs scale")
        ax.legend(fontsize=6)
    return plotting.save(fig, path)


def clouds_text(run, **_):
    plateau = plateau_scale(run)
    n_points = run.arrays.get("n_points")
    lines = [
        "",
        f"{len(run.arrays['shuffle_index'])} clouds"
        + (
            f" of {int(np.min(n_points))}-{int(np.max(n_points))} points"
            if n_points is not None
            else ""
        )
        + f"; plateau scale n1 = {int(run.arrays['gride_n1'][plateau])} (the flattest step of "
        "the structured clouds' ID against scale).",
    ]
    for scale, what in ((0, "first scale"), (plateau, "plateau scale")):
        h = cloud_headline(run, scale)
        n1 = int(run.arrays["gride_n1"][scale])
        lines += [
            "",
            f"| level | peak layer | peak GRIDE ID (n1={n1}, {what}) | std over "
            "partitions | partitions |",
            "| --- | --- | --- | --- | --- |",
        ]
        for s in run.levels:
            v = h[s]
            lines.append(
                f"| {plotting.level_label(s)} | {v['peak_layer']} | {v['peak_id']:.2f} "
                f"| {v['peak_std']:.2f} "
                f"| {v['partitions']} |"
            )
        if len(run.levels) > 1 and 0 in h:
            top = run.levels[-1]
            layer = h[0]["peak_layer"] - 1
            structured = np.nanmean(_ids(run, scale, run.rows(0))[:, layer])
            shuffled = np.nanmean(_ids(run, scale, run.rows(top))[:, layer])
            lines += [
                "",
                f"At the structured peak (layer {layer + 1}, n1={n1}) the ID is "
                f"{structured:.2f} structured and {shuffled:.2f} {plotting.level_label(top)} "
                f"(structured minus {plotting.level_label(top)}: {structured - shuffled:+.2f}).",
            ]
    return lines
