"""Curvature of the token trajectory (Hosseini & Fedorenko 2023, NeurIPS).

Mean over consecutive valid tokens t of the angle between v_t and v_{t+1},
v_t = (x_{t+1} - x_t) / |x_{t+1} - x_t|, tokens in their order (padding
skipped). The angle is computed as 2 atan2(|u - w|, |u + w|) for unit u, w,
which is accurate at small angles where arccos(u . w) is not. Steps of zero
length (a repeated vector) have no direction and are left out; NaN with
fewer than 3 valid tokens.
"""

import jax.numpy as jnp
from jax import lax

from geom_jax.metrics import backends, validation
from geom_jax.metrics.declare.observable import Field, Observable


def curvature_of(x, valid):
    """Mean turning angle [C] of the valid tokens of x [C, N, D] in index order."""
    n = x.shape[-2]
    count = jnp.sum(valid, axis=-1)
    prefix = jnp.all(valid == (jnp.arange(n) < count[..., None]))

    def compact():
        order = jnp.argsort(~valid, axis=-1, stable=True)
        return jnp.take_along_axis(x, order[..., None], axis=-2)

    xs = lax.cond(prefix, lambda: x, compact)  # the usual case: padding at the end
    v = xs[..., 1:, :] - xs[..., :-1, :]
    norm = jnp.sqrt(jnp.sum(v * v, axis=-1))
    step_ok = (jnp.arange(n - 1) < count[..., None] - 1) & (norm > 0)
    u = v / jnp.where(step_ok, norm, 1.0)[..., None]
    a, b = u[..., :-1, :], u[..., 1:, :]
    diff = jnp.sqrt(jnp.sum((a - b) ** 2, axis=-1))
    summ = jnp.sqrt(jnp.sum((a + b) ** 2, axis=-1))
    angle = 2.0 * jnp.arctan2(diff, summ)
    ok = step_ok[..., :-1] & step_ok[..., 1:]
    m = jnp.sum(ok, axis=-1)
    return jnp.where(
        m > 0, jnp.sum(jnp.where(ok, angle, 0.0), axis=-1) / jnp.maximum(m, 1), jnp.nan
    )


def _compute(ctx):
    return {"curvature": curvature_of(ctx.x, ctx.valid)}


def curvature(x, mask=None):
    """Mean curvature (radians) of each token trajectory x [..., N, D] -> [...].

    Reference: Hosseini & Fedorenko 2023, "Large language models implicitly
    learn to straighten neural sentence trajectories", eq. for C_t.
    """
    x = validation.as_points(x, "x")
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask)
    valid = jnp.ones(x.shape[:-1], bool) if mask is None else mask
    return backends.on_points(_compute, x, valid, {})["curvature"]


OBSERVABLE = Observable(
    name="curvature",
    compute=_compute,
    fields=(Field("curvature", (), "mean turning angle (radians) of the token trajectory."),),
    consumes=("points",),
    doc=__doc__,
    reference="Hosseini & Fedorenko 2023 (NeurIPS), arXiv:2311.04930",
    reduce="mean over consecutive valid tokens",
    token_cloud=True,
)
