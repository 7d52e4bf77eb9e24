"""Spectral summaries of a cloud: participation ratio and matrix entropy.

* Participation ratio (linear dimension): (sum lambda)^2 / sum lambda^2 of the
  covariance of the valid points, = tr(G)^2 / |G|_F^2 with G the centred Gram
  matrix (same nonzero spectrum up to the factor 1/N), so no eigendecomposition.
* Matrix-based Renyi entropy (Giraldo, Rao & Principe 2014, IEEE Trans. Inf.
  Theory 61(1), eq. 9; the "prompt entropy" of Skean et al. 2025, ICML,
  arXiv:2502.02013) of rho = C / N, C the N x N cosine-similarity matrix of the
  valid points: S_alpha = log(sum lambda^alpha) / (1 - alpha); alpha = 2 from
  the Frobenius norm of C, read off the shared centred Gram matrix in one
  N x N pass (layer_geometry's default: no eigendecomposition), alpha = 1
  (von Neumann, -sum lambda log lambda) and other alpha from the eigenvalues
  of the smaller of U U^T / N and U^T U / N (U the unit-normalised points),
  which share the nonzero spectrum.
All valid points take part, duplicates included.
"""

import jax.numpy as jnp
from jax import lax

from geom_jax.errors import ArgumentError
from geom_jax.metrics import cosine, distances, engine, validation
from geom_jax.metrics.observable import Field, Observable, Option


def participation_ratio_from_moments(tr, fro):
    """(tr S)^2 / |S|_F^2 [C] (NaN for a cloud without spread)."""
    return jnp.where(fro > 0, tr * tr / jnp.where(fro > 0, fro, 1.0), jnp.nan)


def participation_ratio_from_gram(gram, valid):
    """(tr G)^2 / |G|_F^2 [C] from the centred Gram matrix [C, N, N] (zero rows at padding)."""
    del valid
    return participation_ratio_from_moments(*distances.trace_and_frobenius(gram))


def scatter_matrix(xc):
    """Xc^T Xc [C, D, D] of centred points xc [C, N, D] (zero rows at padding): the
    Gram matrix's nonzero spectrum without its N x N size."""
    return jnp.einsum("...nd,...ne->...de", xc, xc, precision=distances.HIGHEST)


def _unit_rows(x, valid):
    xv = jnp.where(valid[..., None], x, 0.0)
    norm2 = jnp.sum(xv * xv, axis=-1)
    inv = jnp.where(norm2 > 0, lax.rsqrt(jnp.where(norm2 > 0, norm2, 1.0)), 0.0)
    return xv * inv[..., None]


def cosine_frobenius_from_gram(x, valid, gram, centre):
    """sum_ij cos(x_i, x_j)^2 [C] over valid pairs, from the centred Gram matrix:
    x_i . x_j = G_ij + a_i + a_j with a_i = x_i . c - |c|^2 / 2 (one N x N pass)."""
    hi = distances.HIGHEST
    xv = jnp.where(valid[..., None], x, 0.0)
    norm2 = jnp.sum(xv * xv, axis=-1)
    inv = jnp.where(norm2 > 0, lax.rsqrt(jnp.where(norm2 > 0, norm2, 1.0)), 0.0)
    a = (
        jnp.einsum("...nd,...d->...n", xv, centre, precision=hi)
        - 0.5 * jnp.sum(centre * centre, axis=-1)[..., None]
    )
    cos = (gram + a[..., :, None] + a[..., None, :]) * inv[..., :, None] * inv[..., None, :]
    return jnp.einsum("...ij,...ij->...", cos, cos, precision=hi)


def matrix_entropy_of(x, valid, alpha, gram=None, centre=None):
    """Matrix-based Renyi entropy [C] of the cosine matrix / N of x [C, N, D]
    (alpha = 2 from the centred Gram matrix and centre when given)."""
    hi = distances.HIGHEST
    count = jnp.sum(valid, axis=-1).astype(jnp.float32)
    if alpha == 2.0 and gram is not None:
        return -jnp.log(cosine_frobenius_from_gram(x, valid, gram, centre) / (count * count))
    u = _unit_rows(x, valid)
    n, d = x.shape[-2:]
    if d <= n:
        small = jnp.einsum("...nd,...ne->...de", u, u, precision=hi)
    else:
        small = jnp.einsum("...nd,...md->...nm", u, u, precision=hi)
    small = small / count[..., None, None]
    if alpha == 2.0:
        return -jnp.log(jnp.einsum("...ij,...ij->...", small, small, precision=hi))
    lam = jnp.maximum(jnp.linalg.eigvalsh(small), 0.0)
    if alpha == 1.0:
        pos = lam > 0
        return -jnp.sum(jnp.where(pos, lam * jnp.log(jnp.where(pos, lam, 1.0)), 0.0), axis=-1)
    return jnp.log(jnp.sum(lam**alpha, axis=-1)) / (1.0 - alpha)


def check_alpha(alpha, name="alpha"):
    if not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ArgumentError("{" + name + "} must be a number > 0, got {value!r}", name, value=alpha)


ENTROPY_ALPHA = Option(
    "entropy_alpha",
    float,
    2.0,
    "Order alpha of the matrix-based Renyi entropy (2: from the shared Gram matrix; 1, von "
    "Neumann, and other orders need an eigendecomposition per layer).",
    check=lambda a: check_alpha(a, "entropy_alpha"),
)


def _pr(ctx):
    return {"participation_ratio": participation_ratio_from_moments(*ctx.scatter_moments())}


def _entropy(ctx):
    alpha = float(ctx.options["entropy_alpha"])
    if alpha == 2.0:
        # sum_ij cos_ij^2 = N^2 (mean^2 + std^2) over the full matrix: free from the
        # cosine statistics (shared with the cosine observable when both are requested).
        mean, std = cosine.stats(ctx, diagonal=True)
        return {"matrix_entropy": -jnp.log(mean * mean + std * std)}
    return {"matrix_entropy": matrix_entropy_of(ctx.x, ctx.valid, alpha)}


def _points(x, mask):
    x = validation.as_points(x, "x")
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask, min_valid=2)
    return x, jnp.ones(x.shape[:-1], bool) if mask is None else mask


def participation_ratio(x, mask=None):
    """Participation ratio (sum lambda)^2 / sum lambda^2 of each cloud x [..., N, D] -> [...].

    lambda: eigenvalues of the covariance of the valid points. Reference:
    Gao et al. 2017 (arXiv:1710.08926), eq. 2; Recanatesi et al. 2022.
    """
    x, valid = _points(x, mask)
    return engine.on_points(_pr, x, valid, {})["participation_ratio"]


def matrix_entropy(x, mask=None, *, alpha=ENTROPY_ALPHA.default):
    """Matrix-based Renyi entropy of order alpha of each cloud x [..., N, D] -> [...].

    rho = C / N with C the cosine-similarity matrix of the valid points.
    Reference: Giraldo et al. 2014, eq. 9; Skean et al. 2025 (prompt entropy).
    """
    check_alpha(alpha)
    x, valid = _points(x, mask)
    return engine.on_points(_entropy, x, valid, {"entropy_alpha": float(alpha)})["matrix_entropy"]


PARTICIPATION_RATIO = Observable(
    name="participation_ratio",
    compute=_pr,
    fields=(Field("participation_ratio", (), "participation ratio of the covariance."),),
    consumes=("points",),
    doc=__doc__,
    reference="Gao et al. 2017, arXiv:1710.08926, eq. 2",
    reduce="covariance over valid tokens",
    dataset=True,
)

MATRIX_ENTROPY = Observable(
    name="matrix_entropy",
    compute=_entropy,
    fields=(
        Field("matrix_entropy", (), "matrix-based Renyi entropy (alpha = entropy_alpha) of C / N."),
    ),
    consumes=("points", "gram"),
    doc=__doc__,
    reference="Giraldo et al. 2014, eq. 9; Skean et al. 2025, arXiv:2502.02013",
    reduce="spectrum of the cosine matrix over valid tokens",
    options=(ENTROPY_ALPHA,),
)
