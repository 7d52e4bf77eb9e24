"""The measures: one module per family of observables, each declaring its units.

Every module here holds JAX kernels, the public functions over point clouds
(``f(x, mask=None, *, options)``) and the :class:`~geom_jax.metrics.declare.observable.Observable`
declarations that :mod:`geom_jax.metrics.declare.builtin` registers. Measures find
neighbours through :mod:`geom_jax.metrics.neighbours` and run on single clouds
through :func:`geom_jax.metrics.backends.on_points`.
"""
