"""How a layer chunk's shared intermediates are computed: the dense context (one
centred Gram matrix per cloud) and the row-blocked one (blocks of Gram rows, no
N x N array), both answering the questions of :mod:`.protocol`; ``conditioning``
makes clouds safe for float32 first.

Measures use this package only through :func:`on_points` (one observable's
compute on single clouds) and the protocol.
"""

from geom_jax.metrics.backends.dense_context import on_points

__all__ = ["on_points"]
