"""``report.md`` and its figures: the sections the measured observables declare.

Nothing here names an observable: each declares its ``ReportSection``s (a
figure and the numbers it states), and a section is drawn for the runs that hold
the fields it needs (by default any saved field of its observable), once
however many observables share it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from geom_jax.io import files
from geom_jax.metrics.declare import registry
from geom_jax.metrics.declare.observable import ReportSection
from geom_jax.plotting import Run, has
from geom_jax.report.runs import load_runs


def _holds(section: ReportSection, saved: Sequence[str], run: Run) -> bool:
    if section.needs:
        return has([run], *section.needs)
    return any(f in run.arrays for f in saved)


def sections_for(runs: Sequence[Run]) -> dict[ReportSection, list[Run]]:
    """The sections of the observables whose fields some runs (of the sections' kinds)
    hold, in registry order, each with those runs (per-prompt and pooled runs of one
    report measure different sets)."""
    registry.discover()
    out: dict[ReportSection, list[Run]] = {}
    for obs in registry.REGISTRY.values():
        saved = [f.name for f in obs.saved_fields()]
        for section in obs.report:
            mine = [r for r in runs if r.kind in section.kinds and _holds(section, saved, r)]
            if mine:
                out.setdefault(section, [])
                out[section] += [r for r in mine if all(r is not o for o in out[section])]
    return out


def make_report(folders: Sequence[str], output_dir: str, scale: int = 0) -> str:
    """Writes the figures and ``report.md`` for ``folders``; returns its path.

    Args:
      folders: result folders (``output_dir`` of runs); pooled per model.
      output_dir: where the PNGs and report.md go.
      scale: the GRIDE scale index j (n1 = 2**j) the sections use for the ID.
    """
    runs = load_runs(folders)
    os.makedirs(output_dir, exist_ok=True)
    sections = sections_for(runs)
    figures = {}
    for section, mine in sections.items():
        if section.figure is not None:
            path = os.path.join(output_dir, section.png())
            figures[section.title] = section.figure(mine, path, scale=scale)
    lines = ["# Geometry of tokens: report", "", "Result folders:", ""]
    lines += [f"- `{f}`" for f in folders]
    for run in runs:
        lines += ["", f"## {run.label}", ""]
        for section, mine in sections.items():
            if section.text is not None and any(run is r for r in mine):
                lines += section.text(run, scale=scale)
    lines += [""]
    for title, path in figures.items():
        lines += [f"## {title}", "", f"![{title}]({os.path.basename(path)})", ""]
    path = os.path.join(output_dir, "report.md")
    files.atomic_write_bytes(path, "\n".join(lines).encode())
    return path
