"""The paper's figures and a markdown report from one or more result folders.

Figures (one panel per model): intrinsic dimension against layer for the
structured prompts and each shuffle level (mean +- std, cf. the paper's
Fig. 2), neighbourhood overlap chi_k for k = 1, 2, 4 (Fig. 3), cosine
similarity (Fig. 4), ID against GRIDE scale, and the Pearson correlation of ID
with the loss across structured prompts at each layer with a scatter plot at
the layer of strongest correlation (Sec. 4.3).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from geom_jax import results as results_io

OVERLAP_KS = (1, 2, 4)


@dataclasses.dataclass
class Run:
    """The rows of one model, pooled over its result folders."""

    label: str
    arrays: dict[str, np.ndarray]

    def rows(self, shuffle_index: int, prompts: np.ndarray | None = None) -> np.ndarray:
        """Row indices at ``shuffle_index``; only those of ``prompts`` if given."""
        rows = np.flatnonzero(self.arrays["shuffle_index"] == shuffle_index)
        if prompts is not None:
            rows = rows[np.isin(self.arrays["prompt_index"][rows], prompts)]
        return rows

    @property
    def levels(self) -> list[int]:
        """Shuffle levels, least shuffled first (full permutations, s = -1, last)."""
        return sorted((int(s) for s in np.unique(self.arrays["shuffle_index"])), key=_disorder)


def load_runs(folders: Sequence[str]) -> list[Run]:
    """Loads result folders and pools them per model.

    Structured rows that also occur in a shuffled run of the same model (same
    prompt, s = 0) are kept once.
    """
    by_model: dict[str, list[dict]] = {}
    for folder in folders:
        r = results_io.load_results(folder)
        by_model.setdefault(r["metadata"].get("model", folder), []).append(r)
    runs = []
    for label, parts in by_model.items():
        keys = [
            k for k in parts[0] if k not in ("metadata", "gride_n1") and all(k in q for q in parts)
        ]
        seen, take = set(), []
        for part in parts:
            rows = []
            repeat = part.get("shuffle_repeat", np.zeros_like(part["shuffle_index"]))
            for i, row in enumerate(zip(part["prompt_index"], part["shuffle_index"], repeat)):
                row = tuple(int(v) for v in row)
                if row not in seen:
                    seen.add(row)
                    rows.append(i)
            take.append((part, np.asarray(rows, int)))
        arrays = {k: np.concatenate([part[k][rows] for part, rows in take]) for k in keys}
        arrays["gride_n1"] = parts[0]["gride_n1"]
        runs.append(Run(label, arrays))
    return runs


def peak_id(run: Run, shuffle_index: int, scale: int = 0, prompts=None) -> np.ndarray:
    """[prompts] maximum over layers of the GRIDE ID at ``scale``."""
    return np.nanmax(run.arrays["gride_ids"][run.rows(shuffle_index, prompts), :, scale], axis=1)


def pearson_by_layer(run: Run, scale: int = 0) -> np.ndarray:
    """[L] Pearson r between GRIDE ID and loss across structured prompts."""
    rows = run.rows(0)
    ids = run.arrays["gride_ids"][rows, :, scale]
    loss = run.arrays["loss"][rows]
    if len(rows) < 3:
        return np.full(ids.shape[1], np.nan)
    ids_c = ids - ids.mean(0)
    loss_c = loss - loss.mean()
    denom = np.sqrt((ids_c**2).sum(0) * (loss_c**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ids_c * loss_c[:, None]).sum(0) / denom


def _figure(num_panels: int, height: float = 3.4):
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top

    fig, axes = plt.subplots(
        1, num_panels, figsize=(5.2 * num_panels, height), squeeze=False, constrained_layout=True
    )
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, axes[0]


def _save(fig, path: str) -> str:
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _band(ax, x, values, label, color=None):
    mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
    (line,) = ax.plot(x, mean, label=label, color=color, lw=1.6)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.18, lw=0)


def _disorder(s: int) -> tuple[bool, int]:
    return (s < 0, s)


def _level_label(s: int) -> str:
    if s < 0:
        return "permuted"
    return "structured (s=0)" if s == 0 else f"shuffled s={s}"


def plot_id_vs_layer(runs: Sequence[Run], path: str, scale: int = 0) -> str:
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    fig, axes = _figure(len(runs))
    for ax, run in zip(axes, runs):
        colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(run.levels), 2)))
        for color, s in zip(colors, run.levels):
            ids = run.arrays["gride_ids"][run.rows(s), :, scale]
            _band(ax, np.arange(1, ids.shape[1] + 1), ids, _level_label(s), color)
        n1 = int(run.arrays["gride_n1"][scale])
        ax.set(xlabel="layer", ylabel=f"GRIDE ID (n1={n1}, n2={2 * n1})", title=run.label)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_overlap(runs: Sequence[Run], path: str, ks: Sequence[int] = OVERLAP_KS) -> str:
    fig, axes = _figure(len(runs))
    for ax, run in zip(axes, runs):
        for s in sorted({0, run.levels[-1]}):
            for k in ks:
                ov = run.arrays["overlap"][run.rows(s), :, k - 1]
                style = "-" if s == 0 else "--"
                mean = np.nanmean(ov, 0)
                x = np.arange(1, ov.shape[1] + 1) + 0.5
                ax.plot(x, mean, style, label=f"k={k}, {_level_label(s)}")
        ax.set(
            xlabel="layer l (overlap of l and l+1)", ylabel="chi_k", title=run.label, ylim=(0, 1)
        )
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_cosine(runs: Sequence[Run], path: str) -> str:
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    fig, axes = _figure(len(runs))
    for ax, run in zip(axes, runs):
        colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(run.levels), 2)))
        for color, s in zip(colors, run.levels):
            cos = run.arrays["cos_mean"][run.rows(s)]
            _band(ax, np.arange(cos.shape[1]), cos, _level_label(s), color)
        ax.set(xlabel="layer (0 = embedding)", ylabel="mean cosine similarity", title=run.label)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_id_vs_scale(runs: Sequence[Run], path: str) -> str:
    fig, axes = _figure(len(runs))
    for ax, run in zip(axes, runs):
        ids = run.arrays["gride_ids"]
        num_layers = ids.shape[1]
        layers = sorted({1, num_layers // 4, num_layers // 2, 3 * num_layers // 4, num_layers})
        for s in sorted({0, run.levels[-1]}):
            rows = run.rows(s)
            for layer in layers:
                scales = np.nanmean(run.arrays["gride_scales"][rows, layer - 1], 0)
                d = np.nanmean(ids[rows, layer - 1], 0)
                style = "o-" if s == 0 else "x--"
                ax.plot(scales, d, style, ms=3, label=f"layer {layer}, {_level_label(s)}")
        ax.set(xscale="log", xlabel="GRIDE scale (mean neighbour distance)", ylabel="ID")
        ax.set_title(run.label)
        ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def plot_id_loss(runs: Sequence[Run], path: str, scale: int = 0) -> str:
    """Pearson r per layer, then ID-loss scatters at the layer of strongest |r|
    and, where it differs, at the layer of highest (positive) r."""
    fig, axes = _figure(3 * len(runs))
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
    return _save(fig, path)


RECIPROCITY_KS = (1, 4, 16)
ID_ESTIMATORS = (
    ("gride_ids", "GRIDE (n1=1)"),
    ("twonn", "TwoNN"),
    ("mle_id", "MLE (Levina-Bickel)"),
    ("tle_id", "TLE"),
)
MAX_SCATTER = 4000


def _has(runs: Sequence[Run], field: str) -> bool:
    return all(field in run.arrays for run in runs)


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), for Spearman's rho."""
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a), dtype=float)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def local_id_pairs(run: Run, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(local ID, surprisal) of every token t >= 1 of the structured rows at ``layer``
    (0-based over transformer layers): token t's surprisal is token_nll[t - 1]."""
    rows = run.rows(0)
    lid = run.arrays["local_id"][rows, layer, 1:]
    nll = run.arrays["token_nll"][rows]
    ok = np.isfinite(lid) & (nll > 0)
    return lid[ok].astype(np.float64), nll[ok].astype(np.float64)


def local_id_correlations(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """[L] Pearson and Spearman correlation between each token's local ID (MLE)
    and its surprisal, pooled over the structured prompts' tokens."""
    num_layers = run.arrays["local_id"].shape[1]
    pearson, spearman = np.full(num_layers, np.nan), np.full(num_layers, np.nan)
    for layer in range(num_layers):
        lid, nll = local_id_pairs(run, layer)
        pearson[layer] = _pearson(lid, nll)
        spearman[layer] = _pearson(_ranks(lid), _ranks(nll))
    return pearson, spearman


def plot_reciprocity(runs: Sequence[Run], path: str, ks: Sequence[int] = RECIPROCITY_KS) -> str:
    fig, axes = _figure(len(runs))
    for ax, run in zip(axes, runs):
        rec = run.arrays["reciprocity"]
        for s in sorted({0, run.levels[-1]}):
            for k in [k for k in ks if k <= rec.shape[-1]]:
                mean = np.nanmean(rec[run.rows(s), :, k - 1], 0)
                style = "-" if s == 0 else "--"
                ax.plot(np.arange(1, len(mean) + 1), mean, style, label=f"k={k}, {_level_label(s)}")
        ax.set(xlabel="layer", ylabel="kNN-graph reciprocity", title=run.label, ylim=(0, 1))
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_info_imbalance(runs: Sequence[Run], path: str) -> str:
    fig, axes = _figure(2 * len(runs))
    for i, run in enumerate(runs):
        rows = run.rows(0)
        if "info_imbalance_next" in run.arrays:
            nxt = np.nanmean(run.arrays["info_imbalance_next"][rows], 0)
            x = np.arange(1, len(nxt) + 1) + 0.5
            ax = axes[2 * i]
            ax.plot(x, nxt[:, 0], "o-", ms=3, label="Delta(l -> l+1)")
            ax.plot(x, nxt[:, 1], "s--", ms=3, label="Delta(l+1 -> l)")
            ax.set(xlabel="layer l (pair l, l+1)", ylabel="information imbalance")
            ax.set_title(f"{run.label}: consecutive layers (structured)")
            ax.legend(fontsize=7)
        if "info_imbalance_last" in run.arrays:
            last = np.nanmean(run.arrays["info_imbalance_last"][rows], 0)
            x = np.arange(1, len(last) + 1)
            ax = axes[2 * i + 1]
            ax.plot(x, last[:, 0], "o-", ms=3, label="Delta(l -> last)")
            ax.plot(x, last[:, 1], "s--", ms=3, label="Delta(last -> l)")
            ax.set(xlabel="layer l", ylabel="information imbalance")
            ax.set_title(f"{run.label}: against the last layer (structured)")
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_id_estimators(runs: Sequence[Run], path: str) -> str:
    """Every ID estimator against layer on one panel per model (structured rows)."""
    fig, axes = _figure(len(runs))
    for ax, run in zip(axes, runs):
        rows = run.rows(0)
        for field, label in ID_ESTIMATORS:
            if field not in run.arrays:
                continue
            values = run.arrays[field][rows]
            values = values[..., 0] if values.ndim == 3 else values
            _band(ax, np.arange(1, values.shape[1] + 1), values, label)
        ax.set(xlabel="layer", ylabel="intrinsic dimension", title=f"{run.label}: structured")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_local_id_surprisal(runs: Sequence[Run], path: str) -> str:
    """Per layer Pearson / Spearman r (token local ID, surprisal), then a scatter
    at the layer of strongest |Spearman r|."""
    fig, axes = _figure(2 * len(runs))
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
    return _save(fig, path)


def make_report(folders: Sequence[str], output_dir: str, scale: int = 0) -> str:
    """Writes the figures and ``report.md`` for ``folders``; returns its path."""
    runs = load_runs(folders)
    os.makedirs(output_dir, exist_ok=True)
    figures = {
        "Intrinsic dimension across layers": plot_id_vs_layer(
            runs, os.path.join(output_dir, "id_vs_layer.png"), scale
        ),
        "Neighbourhood overlap across layers": plot_overlap(
            runs, os.path.join(output_dir, "overlap_vs_layer.png")
        ),
        "Cosine similarity across layers": plot_cosine(
            runs, os.path.join(output_dir, "cosine_vs_layer.png")
        ),
        "Intrinsic dimension against GRIDE scale": plot_id_vs_scale(
            runs, os.path.join(output_dir, "id_vs_scale.png")
        ),
        "Intrinsic dimension and loss": plot_id_loss(
            runs, os.path.join(output_dir, "id_loss.png"), scale
        ),
    }
    extra = (
        ("reciprocity", "kNN-graph reciprocity across layers", plot_reciprocity, "reciprocity"),
        ("info_imbalance_next", "Information imbalance", plot_info_imbalance, "info_imbalance"),
        ("mle_id", "Intrinsic dimension estimators", plot_id_estimators, "id_estimators"),
        ("local_id", "Token local ID and surprisal", plot_local_id_surprisal, "local_id_nll"),
    )
    for field, title, plot, name in extra:
        if _has(runs, field) or (field == "mle_id" and _has(runs, "tle_id")):
            figures[title] = plot(runs, os.path.join(output_dir, f"{name}.png"))
    from geom_jax.lens import report as lens_report  # pylint: disable=g-import-not-at-top

    figures.update(lens_report.figures(runs, output_dir, scale))
    text = _report_text(runs, folders, figures, scale)
    path = os.path.join(output_dir, "report.md")
    results_io.atomic_write_bytes(path, text.encode())
    return path


def headline(run: Run, scale: int = 0) -> dict:
    """The numbers the report states for one model."""
    levels = run.levels
    out = {
        "num_prompts": int(len(np.unique(run.arrays["prompt_index"]))),
        "peak_id": {s: float(np.mean(peak_id(run, s, scale))) for s in levels},
        "peak_layer": {
            s: int(np.nanargmax(np.nanmean(run.arrays["gride_ids"][run.rows(s), :, scale], 0))) + 1
            for s in levels
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


def _table(label: str, values: np.ndarray, fmt: str = "{:.3f}") -> list[str]:
    return [
        "",
        "| layer | " + " | ".join(str(i + 1) for i in range(len(values))) + " |",
        "| --- |" + " --- |" * len(values),
        f"| {label} | " + " | ".join(fmt.format(v) for v in values) + " |",
    ]


def _extra_text(run: Run) -> list[str]:
    """The numbers behind the figures of observables beyond the paper's set."""
    a, rows, lines = run.arrays, run.rows(0), []
    if "reciprocity" in a:
        rec = np.nanmean(a["reciprocity"][rows], 0)
        k = min(RECIPROCITY_KS[-1], rec.shape[-1])
        lines += ["", f"kNN-graph reciprocity (k = {k}), mean over the structured prompts:"]
        lines += _table(f"k={k}", rec[:, k - 1])
    if "info_imbalance_next" in a:
        nxt = np.nanmean(a["info_imbalance_next"][rows], 0)
        lines += [
            "",
            "Information imbalance between consecutive layers (structured), "
            "Delta(l -> l+1) / Delta(l+1 -> l):",
        ]
        lines += _table("->", nxt[:, 0]) + [
            "| <- | " + " | ".join(f"{v:.3f}" for v in nxt[:, 1]) + " |"
        ]
    if "info_imbalance_last" in a:
        last = np.nanmean(a["info_imbalance_last"][rows], 0)
        lines += [
            "",
            "Information imbalance to the last layer (structured), "
            "Delta(l -> last) / Delta(last -> l):",
        ]
        lines += _table("->", last[:, 0]) + [
            "| <- | " + " | ".join(f"{v:.3f}" for v in last[:, 1]) + " |"
        ]
    present = [(f, label) for f, label in ID_ESTIMATORS if f in a]
    if len(present) > 1:
        lines += ["", "Intrinsic dimension by estimator, mean over the structured prompts:", ""]
        num_layers = a[present[0][0]].shape[1]
        lines += ["| estimator | " + " | ".join(str(i + 1) for i in range(num_layers)) + " |"]
        lines += ["| --- |" + " --- |" * num_layers]
        for field, label in present:
            v = a[field][rows]
            v = np.nanmean(v[..., 0] if v.ndim == 3 else v, 0)
            lines.append(f"| {label} | " + " | ".join(f"{x:.2f}" for x in v) + " |")
    if "local_id" in a and "token_nll" in a:
        pearson, spearman = local_id_correlations(run)
        if not np.all(np.isnan(spearman)):
            best = int(np.nanargmax(np.abs(spearman)))
            lines += [
                "",
                "Correlation between each token's local ID (MLE) and its surprisal, pooled "
                f"over the structured prompts' tokens: strongest at layer {best + 1} "
                f"(Spearman {spearman[best]:.3f}, Pearson {pearson[best]:.3f}).",
            ]
            lines += _table("Pearson", pearson, "{:.2f}")
            lines.append("| Spearman | " + " | ".join(f"{v:.2f}" for v in spearman) + " |")
    from geom_jax.lens import report as lens_report  # pylint: disable=g-import-not-at-top

    return lines + lens_report.text(run)


def _report_text(runs, folders, figures, scale) -> str:
    lines = ["# Geometry of tokens: report", "", "Result folders:", ""]
    lines += [f"- `{f}`" for f in folders]
    for run in runs:
        h = headline(run, scale)
        n1 = int(run.arrays["gride_n1"][scale])
        lines += ["", f"## {run.label}", "", f"{h['num_prompts']} prompts.", ""]
        lines += [
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
                "",
                "| layer | " + " | ".join(str(i + 1) for i in range(len(r))) + " |",
                "| --- |" + " --- |" * len(r),
                "| r | " + " | ".join(f"{v:.2f}" for v in r) + " |",
            ]
        lines += _extra_text(run)
    lines += [""]
    for title, path in figures.items():
        lines += [f"## {title}", "", f"![{title}]({os.path.basename(path)})", ""]
    return "\n".join(lines)
