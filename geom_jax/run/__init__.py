"""A run: its spec and flags (one table), checks, output folder, plan, sweep with
verified checkpoints, files and provenance; :func:`run` does it all."""

from geom_jax.run.checks import UserError
from geom_jax.run.runner import run
from geom_jax.run.spec import FIELDS, METHODS, RunSpec

__all__ = ["FIELDS", "METHODS", "RunSpec", "UserError", "run"]
