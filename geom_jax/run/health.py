"""One line on the degenerate clouds of a run, from the status bits the observables declare."""

from __future__ import annotations

import numpy as np
from absl import logging

from geom_jax.pipeline import schema


def degenerate_summary(status: np.ndarray, observables="paper") -> str | None:
    """One line counting the rows and layers flagged in ``status`` [P, L], or None."""
    parts = []
    for flag, what in schema.status_flags(observables).items():
        hit = (status & flag) != 0
        if hit.any():
            parts.append(f"{int(hit.any(axis=1).sum())} rows ({int(hit.sum())} layers): {what}")
    if not parts:
        return None
    return f"degenerate clouds among {status.shape[0]} rows x {status.shape[1]} layers: " + (
        "; ".join(parts) + " (results.npz 'status')"
    )


def report_degenerate(status: np.ndarray, observables="paper") -> None:
    line = degenerate_summary(np.asarray(status, np.int32), observables)
    if line:
        logging.warning("%s", line)
    else:
        logging.info("no degenerate clouds: every layer finite with enough distinct tokens")
