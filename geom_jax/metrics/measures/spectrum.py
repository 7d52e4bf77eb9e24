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
  (von Neumann, -sum lambda log lambda) and other alpha from the singular
  values of U (the unit-normalised points): lambda_i = sigma_i^2 / N, the
  nonzero spectrum of both U U^T / N and U^T U / N. A float32 eigensolver on
  the Gram matrix leaves every eigenvalue an absolute error ~eps lambda_max,
  a relative eps lambda_max / lambda_i on the small ones; the singular values
  of U bring that to ~eps sqrt(lambda_max / lambda_i). The largest
  eigenvalue's term comes from the trace, lambda_max = t - s with s the sum of
  the others and t the exact trace (the fraction of valid points that are not
  zero vectors), so that its own rounding (~eps, against an entropy that can
  be ~1e-4 for clouds far from the origin) does not enter.
All valid points take part, duplicates included.
"""

import jax.numpy as jnp
from jax import lax

from geom_jax.errors import ArgumentError
from geom_jax.metrics import backends, validation
from geom_jax.metrics.declare.observable import Field, Observable, Option
from geom_jax.metrics.declare.options import renamed_keywords
from geom_jax.metrics.measures import cosine
from geom_jax.metrics.neighbours import distances


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
    return xv * inv[..., None], norm2 > 0


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


def _spectrum_entropy(u, nonzero, count, alpha):
    """Renyi entropy [C] of order alpha of U^T U / count, U [C, N, D] unit rows
    (zero rows where nonzero [C, N] is False), from the singular values of U."""
    sigma = jnp.linalg.svd(u, compute_uv=False)  # descending
    w = sigma * sigma
    trace = jnp.sum(nonzero, axis=-1).astype(jnp.float32) / count
    total = jnp.sum(w, axis=-1)
    rest = (w[..., 1:] / jnp.where(total > 0, total, 1.0)[..., None]) * trace[..., None]
    s = jnp.sum(rest, axis=-1)
    top = trace - s
    log_top = jnp.log(trace) + jnp.log1p(-s / jnp.where(trace > 0, trace, 1.0))
    if alpha == 1.0:
        pos = rest > 0
        tail = -jnp.sum(jnp.where(pos, rest * jnp.log(jnp.where(pos, rest, 1.0)), 0.0), axis=-1)
        return tail - jnp.where(top > 0, top * log_top, 0.0)
    ratio = jnp.where(top[..., None] > 0, rest / jnp.where(top > 0, top, 1.0)[..., None], 0.0)
    return (alpha * log_top + jnp.log1p(jnp.sum(ratio**alpha, axis=-1))) / (1.0 - alpha)


def matrix_entropy_of(x, valid, alpha, gram=None, centre=None):
    """Matrix-based Renyi entropy [C] of the cosine matrix / N of x [C, N, D]
    (alpha = 2 from the centred Gram matrix and centre when given)."""
    count = jnp.sum(valid, axis=-1).astype(jnp.float32)
    if alpha == 2.0 and gram is not None:
        return -jnp.log(cosine_frobenius_from_gram(x, valid, gram, centre) / (count * count))
    u, nonzero = _unit_rows(x, valid)
    return _spectrum_entropy(u, nonzero, count, alpha)


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
    return backends.on_points(_pr, x, valid, {})["participation_ratio"]


@renamed_keywords(alpha="entropy_alpha")
def matrix_entropy(x, mask=None, *, entropy_alpha=ENTROPY_ALPHA.default):
    """Matrix-based Renyi entropy of order alpha of each cloud x [..., N, D] -> [...].

    rho = C / N with C the cosine-similarity matrix of the valid points.
    Reference: Giraldo et al. 2014, eq. 9; Skean et al. 2025 (prompt entropy).
    """
    check_alpha(entropy_alpha, "entropy_alpha")
    x, valid = _points(x, mask)
    return backends.on_points(_entropy, x, valid, {"entropy_alpha": float(entropy_alpha)})[
        "matrix_entropy"
    ]


PARTICIPATION_RATIO = Observable(
    name="participation_ratio",
    compute=_pr,
    fields=(Field("participation_ratio", (), "participation ratio of the covariance."),),
    consumes=("points",),
    doc=__doc__,
    reference="Gao et al. 2017, arXiv:1710.08926, eq. 2",
    reduce="covariance over valid tokens",
    pooled=True,
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
