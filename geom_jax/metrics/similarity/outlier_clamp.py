"""platonic-rep's outlier clamp of features before any similarity measure.

platonic-rep (Huh et al. 2024, The Platonic Representation Hypothesis, ICML, arXiv
2405.07987) passes every feature tensor through ``measure_alignment.prepare_features``,
i.e. ``metrics.remove_outliers(feats, q=0.95, exact=precise)``, before measuring: with
its command line's default (``--precise`` off, exact=False) the threshold is

  t = mean over points i of quantile_q(|x_i1|, ..., |x_iD|)

(torch.quantile, linear interpolation between order statistics), and every coordinate
is clamped to [-t, t]; q = 1 returns the features unchanged. Its feature files hold one
tensor [N, L, D] per model, so there each point's quantile runs over all L D values of
its layers and one t serves every layer: `clamp_outliers` of x [N, L * D] (the layers
side by side) is that; of x [L, N, D] it is one t per layer. ``exact=True`` (one order
statistic of all N L D values, platonic.Alignment.score's choice) is not offered.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from geom_jax.errors import ArgumentError
from geom_jax.metrics import validation


def check_q(q, name="q"):
    """q, the clamp's quantile, in (0, 1] (ArgumentError naming ``name``)."""
    if isinstance(q, bool) or not isinstance(q, (int, float, np.number)) or not 0 < q <= 1:
        raise ArgumentError("{" + name + "} must be a number in (0, 1], got {v!r}", name, v=q)


def threshold(x, valid, q):
    """t [...]: the mean over valid points of x [..., N, D] of the q-quantile of |x_i|
    (linear interpolation, as torch.quantile and jnp.quantile)."""
    d = x.shape[-1]
    s = jnp.sort(jnp.abs(x), axis=-1)
    pos = q * (d - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, d - 1)
    frac = np.float32(pos - lo)
    per_point = s[..., lo] + frac * (s[..., hi] - s[..., lo])
    total = jnp.sum(jnp.where(valid, per_point, 0.0), axis=-1)
    return total / jnp.sum(valid, axis=-1).astype(x.dtype)


@functools.partial(jax.jit, static_argnames="q")
def _clamped(x, valid, q):
    t = threshold(x, valid, q)[..., None, None]
    return jnp.where(valid[..., None], jnp.clip(x, -t, t), x)


def clamp_outliers(x, mask=None, *, q=0.95):
    """Clamp every coordinate of each cloud x [..., N, D] to [-t, t], t the mean over its
    valid points of the q-quantile of their absolute coordinates.

    Args:
      x: float [..., N, D] point clouds (each [N, D] cloud gets its own t).
      mask: bool [..., N] valid points (None: all); only they set t and are clamped,
        invalid rows are returned as given.
      q: the quantile, in (0, 1]; 1 returns x unchanged (platonic-rep's shortcut).

    Returns:
      float32 [..., N, D].

    Example:
      >>> xc, yc = clamp_outliers(x), clamp_outliers(y)  # then any similarity measure

    Reference: Huh et al. 2024, The Platonic Representation Hypothesis, ICML,
    arXiv 2405.07987; platonic-rep ``metrics.remove_outliers(feats, q, exact=False)``
    as ``measure_alignment.prepare_features`` calls it (q = 0.95).
    """
    check_q(q)
    x = validation.as_points(x, "x")
    batch, n = x.shape[:-2], x.shape[-2]
    mask = validation.as_mask(mask, batch, n)
    valid = jnp.ones(batch + (n,), bool) if mask is None else jnp.broadcast_to(mask, batch + (n,))
    if validation.is_concrete(valid):
        counts = np.asarray(valid).reshape(-1, n).sum(-1)
        if counts.size and counts.min() < 1:
            raise ValueError("mask: clamp_outliers needs >= 1 valid point per cloud, got 0")
        if validation.is_concrete(x):
            validation.check_finite(np.asarray(x), np.asarray(valid), "x")
    if q == 1:
        return x
    return _clamped(x, valid, q=float(q))
