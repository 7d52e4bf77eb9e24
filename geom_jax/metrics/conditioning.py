"""Point clouds made safe for float32 geometry: finiteness and scale.

Every observable of :func:`~geom_jax.metrics.layer_geometry` except the
GRIDE length scales is invariant to the scale of the cloud, but float32
squares are not: a cloud scaled by 1e20 overflows ``|x|^2`` and one scaled by
1e-30 underflows it. :func:`normalise` therefore divides each cloud by the
power of two 2**e nearest above its largest finite valid coordinate
(``frexp``), which is exact in binary floating point: ratios, ranks, cosines
and IDs of an ordinary cloud are bit for bit what they were, and lengths
are multiplied back by 2**e exactly (:func:`restore_lengths`).

A cloud with a NaN or infinite value at a valid point has no geometry;
:func:`normalise` flags it and replaces it by zeros so that it cannot
disturb the kernels, and the caller turns every output of that cloud into
NaN (under ``jit`` too, where no error can be raised).
"""

import jax.numpy as jnp


def normalise(x, valid):
    """Scales clouds x [..., N, D] to a largest |coordinate| in [0.5, 1).

    Args:
      x: float32 point clouds.
      valid: bool [..., N] valid points (the others are ignored).

    Returns:
      (x_scaled, exponent, finite): ``x_scaled = x * 2**-exponent`` (zeros for
      a non-finite cloud), exponent int32 [...], finite bool [...] (no NaN or
      inf at a valid point).
    """
    at_valid = valid[..., None]
    finite = jnp.all(jnp.isfinite(x) | ~at_valid, axis=(-2, -1))
    x = jnp.where(finite[..., None, None] & at_valid, x, 0.0)
    largest = jnp.max(jnp.abs(x), axis=(-2, -1))
    _, exponent = jnp.frexp(jnp.where(largest > 0, largest, 1.0))
    exponent = exponent.astype(jnp.int32)
    return jnp.ldexp(x, -exponent[..., None, None]), exponent, finite


def restore_lengths(a, exponent):
    """Lengths a [..., *] measured on a normalised cloud, back in the input's units."""
    e = exponent.reshape(exponent.shape + (1,) * (a.ndim - exponent.ndim))
    return jnp.ldexp(a, e)
