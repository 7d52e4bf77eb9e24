"""The run's model and tokenizer, loaded with their errors in the run's terms."""

from __future__ import annotations

from geom_jax import models, pipeline
from geom_jax.run import checks
from geom_jax.run import spec as run_spec


def tokenizer(spec: run_spec.RunSpec):
    """The model's tokenizer (at the run's revision)."""
    try:
        return models.load_tokenizer(spec.model, revision=spec.revision or None)
    except (ValueError, OSError) as e:
        raise checks.wrap(e) from None


def load_model(spec: run_spec.RunSpec, mesh, rules):
    """The run's model: its trained weights, or seeded random ones (random_init).
    Returns (model, the random init's record or None)."""
    compute_dtype, param_dtype = pipeline.execution_dtypes(spec.dtype, spec.param_dtype)
    kw = dict(
        dtype=compute_dtype,
        param_dtype=param_dtype,
        tokenizer=False,
        mesh=mesh,
        rules=rules,
        revision=spec.revision or None,
    )
    try:
        if spec.random_init is not None:
            model, _, record = models.load_random(spec.model, seed=spec.random_init, **kw)
            return model, record.metadata()
        model, _ = models.load(spec.model, params_checkpoint=spec.params_checkpoint or None, **kw)
        return model, None
    except ValueError as e:
        raise checks.wrap(e) from None
