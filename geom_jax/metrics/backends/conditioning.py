"""Point clouds made safe for float32 geometry: finiteness and scale.

Every observable of :func:`~geom_jax.metrics.layer_geometry` except the
GRIDE length scales is invariant to the scale of the cloud, but float32
squares are not: a cloud scaled by 1e20 overflows ``|x|^2`` and one scaled by
1e-30 underflows it. :func:`scale_of` and :func:`apply_scale` therefore divide each cloud by the
power of two 2**e nearest above its largest finite valid coordinate
(``frexp``), which is exact in binary floating point: ratios, ranks, cosines
and IDs of an ordinary cloud are bit for bit what they were, and lengths
are multiplied back by 2**e exactly (:func:`restore_lengths`).

A cloud with a NaN or infinite value at a valid point has no geometry;
:func:`scale_of` flags it and replaces it by zeros so that it cannot
disturb the kernels, and the caller turns every output of that cloud into
NaN (under ``jit`` too, where no error can be raised).
"""

import jax.numpy as jnp


def scale_of(x, valid):
    """Exponent and finiteness of clouds x [..., N, D]: one reduction pass.

    Args:
      x: float32 point clouds.
      valid: bool [..., N] valid points (the others are ignored).

    Returns:
      (exponent, finite): exponent int32 [...] such that the largest finite
      valid |coordinate| times 2**-exponent lies in [0.5, 1) (1 for an all-zero
      or non-finite cloud), finite bool [...] (no NaN or inf at a valid point:
      those enter the one maximum as +inf, since XLA's vectorised max need not
      propagate NaN).
    """
    at_valid = valid[..., None]
    size = jnp.where(jnp.isfinite(x), jnp.abs(x), jnp.inf)
    largest = jnp.max(jnp.where(at_valid, size, 0.0), axis=(-2, -1))
    finite = largest < jnp.inf
    largest = jnp.where(finite & (largest > 0), largest, 1.0)
    _, exponent = jnp.frexp(largest)
    return exponent.astype(jnp.int32), finite


def apply_scale(x, valid, exponent, finite):
    """x [..., N, D] times 2**-exponent [...], zeros at invalid points and in
    non-finite clouds. Two exact power-of-two products (each factor a normal
    float32), so that callers can fuse it into their first pass over a chunk."""
    e = -exponent
    first = jnp.clip(e, -126, 127)
    s1 = jnp.ldexp(jnp.ones(e.shape, jnp.float32), first)[..., None, None]
    s2 = jnp.ldexp(jnp.ones(e.shape, jnp.float32), e - first)[..., None, None]
    keep = finite[..., None, None] & valid[..., None]
    return jnp.where(keep, x * s1 * s2, 0.0)


def restore_lengths(a, exponent):
    """Lengths a [..., *] measured on a normalised cloud, back in the input's units."""
    e = exponent.reshape(exponent.shape + (1,) * (a.ndim - exponent.ndim))
    return jnp.ldexp(a, e)
