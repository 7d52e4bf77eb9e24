"""Result folders loaded and pooled per model (the report's input)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geom_jax import results
from geom_jax.metrics.declare.observable import DIMS
from geom_jax.plotting import Run
from geom_jax.run import run_kind

COORDINATES = tuple(d.coord_name for d in DIMS.values() if d.coord_name)
"""Stored coordinates (e.g. gride_n1): not per row, taken from the first folder."""


def load_runs(folders: Sequence[str]) -> list[Run]:
    """Loads result folders and pools them per model and kind of run (each kind says how
    the report reads its rows: :meth:`geom_jax.run.run_kind.RunKind.report_arrays`).

    Structured rows that also occur in a shuffled run of the same model (same prompt,
    s = 0) are kept once.
    """
    by_model: dict[tuple[str, str], list[dict]] = {}
    for folder in folders:
        r = results.load_results(folder)
        kind = run_kind.of_metadata(r["metadata"])
        label = kind.report_label(r["metadata"], folder)
        by_model.setdefault((label, kind.name), []).append(kind.report_arrays(r))
    runs = []
    for (label, kind), parts in by_model.items():
        keys = [
            k
            for k in parts[0]
            if k != "metadata" and k not in COORDINATES and all(k in q for q in parts)
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
        for k in COORDINATES:
            if k in parts[0]:
                arrays[k] = parts[0][k]
        runs.append(Run(label, arrays, kind))
    return runs
