"""The kit observables draw their report sections with: runs, figures, tables, statistics.

A leaf module (NumPy only; matplotlib is imported when a figure is drawn,
not when an observable is declared): an observable's ``ReportSection``
functions receive :class:`Run` objects (the rows of one model, pooled over
its result folders) and use these helpers, so that every section of the
report looks alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


def disorder(s: int) -> tuple[bool, int]:
    """Sort key of shuffle levels: structured first, full permutations (s = -1) last."""
    return (s < 0, s)


def level_label(s: int) -> str:
    if s < 0:
        return "permuted"
    return "structured (s=0)" if s == 0 else f"shuffled s={s}"


@dataclasses.dataclass
class Run:
    """The rows of one model, pooled over its result folders.

    arrays: field -> [rows, ...] (row fields prompt_index, shuffle_index, ...
    included); label: the model's name; kind: the name of its kind of run
    (:mod:`geom_jax.run.kinds`), whose report sections it gets; a pooled run's rows are
    its measured clouds (shuffle_index their level, prompt_index their partition, so
    that a band over rows is the spread over partitions).
    """

    label: str
    arrays: dict[str, np.ndarray]
    kind: str

    def rows(self, shuffle_index: int, prompts: np.ndarray | None = None) -> np.ndarray:
        """Row indices at ``shuffle_index``; only those of ``prompts`` if given."""
        rows = np.flatnonzero(self.arrays["shuffle_index"] == shuffle_index)
        if prompts is not None:
            rows = rows[np.isin(self.arrays["prompt_index"][rows], prompts)]
        return rows

    @property
    def levels(self) -> list[int]:
        """Shuffle levels, least shuffled first (full permutations, s = -1, last)."""
        return sorted((int(s) for s in np.unique(self.arrays["shuffle_index"])), key=disorder)

    @property
    def extremes(self) -> list[int]:
        """The structured level and the most shuffled one (once if they are the same)."""
        return sorted({0, self.levels[-1]}, key=disorder)


def has(runs: Sequence[Run], *fields: str) -> bool:
    """Whether every run holds every one of ``fields``."""
    return all(f in run.arrays for run in runs for f in fields)


def figure(num_panels: int, height: float = 3.4):
    """(fig, axes) with ``num_panels`` side by side, integer x ticks."""
    import matplotlib  # noqa: PLC0415  (drawn on demand: keeps declarations light)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    fig, axes = plt.subplots(
        1, num_panels, figsize=(5.2 * num_panels, height), squeeze=False, constrained_layout=True
    )
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, axes[0]


def real_x_axis(ax) -> None:
    """Undo :func:`figure`'s integer ticks on an axis whose x is not an integer."""
    from matplotlib.ticker import AutoLocator  # noqa: PLC0415

    ax.xaxis.set_major_locator(AutoLocator())


def colours(n: int):
    """n colours of the viridis map, darkest first."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt.cm.viridis(np.linspace(0, 0.9, max(n, 2)))


def save(fig, path: str) -> str:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def band(ax, x, values, label, color=None):
    """Mean over rows of values [rows, len(x)] with a +- std band."""
    mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
    (line,) = ax.plot(x, mean, label=label, color=color, lw=1.6)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.18, lw=0)


def layer_table(label: str, values: np.ndarray, fmt: str = "{:.3f}", first: int = 1) -> list[str]:
    """A markdown table of one value per layer (columns first, first + 1, ...)."""
    return [
        "",
        "| layer | " + " | ".join(str(i + first) for i in range(len(values))) + " |",
        "| --- |" + " --- |" * len(values),
        table_row(label, values, fmt),
    ]


def table_row(label: str, values, fmt: str = "{:.3f}") -> str:
    return f"| {label} | " + " | ".join(fmt.format(v) for v in values) + " |"


def ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), for Spearman's rho."""
    order = np.argsort(a, kind="stable")
    out = np.empty(len(a))
    out[order] = np.arange(len(a), dtype=float)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=out)
    return sums[inverse] / counts[inverse]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two samples; NaN below 3 pairs or for a constant sample."""
    if len(a) < 3:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of the finite pairs (average ranks for ties); NaN below 3 pairs."""
    ok = np.isfinite(a) & np.isfinite(b)
    return pearson(ranks(a[ok]), ranks(b[ok]))
