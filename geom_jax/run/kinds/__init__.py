"""The built-in kinds of run, one registration line each (see :mod:`geom_jax.run.run_kind`)."""

from geom_jax.run import run_kind
from geom_jax.run.kinds.imported import IMPORTED_RUN
from geom_jax.run.kinds.per_prompt import PER_PROMPT_RUN
from geom_jax.run.kinds.pooled import POOLED_RUN

run_kind.register(PER_PROMPT_RUN)
run_kind.register(POOLED_RUN)
run_kind.register(IMPORTED_RUN)

__all__ = ["IMPORTED_RUN", "PER_PROMPT_RUN", "POOLED_RUN"]
