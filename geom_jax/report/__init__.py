"""The report: result folders loaded and pooled per model, each observable's sections
(figures and the numbers they state) assembled into ``report.md``."""

from geom_jax.report.make import make_report, sections_for
from geom_jax.report.runs import load_runs

__all__ = ["load_runs", "make_report", "sections_for"]
