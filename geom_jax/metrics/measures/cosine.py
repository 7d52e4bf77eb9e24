"""Cosine-similarity statistics of a point cloud (the paper's section on cosine similarity)."""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from geom_jax.metrics import validation
from geom_jax.metrics.declare.observable import (
    PER_PROMPT,
    POOLED,
    Field,
    Observable,
    Option,
    ReportSection,
)
from geom_jax.metrics.measures.sections import cosine as sections
from geom_jax.metrics.neighbours import distances


def cosine_stats_from_gram(x, valid, gram, centre, include_diagonal=True):
    """Mean and std of cos(x_i, x_j) over valid pairs, from the centred Gram matrix.

    With x' = x - c: x_i . x_j = G_ij + a_i + a_j, a_i = x_i . c - |c|^2 / 2,
    so the Gram matrix shared with the distances serves here too; norms come
    from direct sums on the raw points and zero vectors have cosine 0 (as
    scikit-learn's cosine_similarity). The mean needs no N x N pass:
    sum_ij cos_ij = |sum_i u_i|^2 with u_i = x_i / |x_i|. The variance is
    one pass, sum_ij w_i w_j (cos_ij - mean)^2, reduced by a matrix-vector
    product.
    """
    w = valid.astype(x.dtype)
    xv = jnp.where(valid[..., None], x, 0.0)
    norm2 = jnp.sum(xv * xv, axis=-1)
    nonzero = norm2 > 0
    inv = jnp.where(nonzero, lax.rsqrt(jnp.where(nonzero, norm2, 1.0)), 0.0)
    cc = jnp.sum(centre * centre, axis=-1)
    a = (
        jnp.einsum("...nd,...d->...n", xv, centre, precision=distances.HIGHEST)
        - 0.5 * cc[..., None]
    )
    count = jnp.sum(w, axis=-1)
    u_sum = jnp.sum(xv * inv[..., None], axis=-2)
    total = jnp.sum(u_sum * u_sum, axis=-1)
    diag = (jnp.diagonal(gram, axis1=-2, axis2=-1) + 2.0 * a) * inv * inv
    if include_diagonal:
        n_pairs = count * count
    else:
        total = total - jnp.sum(w * jnp.where(nonzero, 1.0, 0.0), axis=-1)
        n_pairs = count * (count - 1.0)
    n_pairs = jnp.maximum(n_pairs, 1.0)
    mean = total / n_pairs
    dev = (gram + a[..., :, None] + a[..., None, :]) * inv[..., :, None] * inv[..., None, :]
    dev = dev - mean[..., None, None]
    rows = jnp.einsum("...nm,...m->...n", dev * dev, w, precision=distances.HIGHEST)
    sq = jnp.sum(rows * w, axis=-1)
    if not include_diagonal:
        sq = sq - jnp.sum(w * (diag - mean[..., None]) ** 2, axis=-1)
    return mean, jnp.sqrt(jnp.maximum(sq / n_pairs, 0.0))


def cosine_stats_from_points(x, valid, include_diagonal=True):
    """Mean and std of cos(x_i, x_j) over valid pairs without an N x N pass.

    With unit vectors u_i = x_i / |x_i| (0 for zero vectors), their mean u and
    v_i = u_i - u: the mean is |sum_i u_i|^2 / N^2 and, exactly,
    sum_ij (cos_ij - |u|^2)^2 = 2 N sum_i (u . v_i)^2 + |V^T V|_F^2 (the cross
    terms vanish because sum_i v_i = 0), so the spread needs one D x D product
    and no difference of large sums. Without the diagonal the mean and the
    spread are corrected by the N diagonal terms. What the row-blocked path
    (metrics/backends/blocked_context.py) uses; float32 error ~1e-7 on both.
    """
    hi = distances.HIGHEST
    w = valid.astype(x.dtype)
    xv = jnp.where(valid[..., None], x, 0.0)
    norm2 = jnp.sum(xv * xv, axis=-1)
    nonzero = norm2 > 0
    inv = jnp.where(nonzero, lax.rsqrt(jnp.where(nonzero, norm2, 1.0)), 0.0)
    u = xv * inv[..., None]
    count = jnp.sum(w, axis=-1)
    u_mean = jnp.sum(u, axis=-2) / jnp.maximum(count, 1.0)[..., None]
    v = jnp.where(valid[..., None], u - u_mean[..., None, :], 0.0)
    along = jnp.einsum("...nd,...d->...n", v, u_mean, precision=hi)
    vtv = jnp.einsum("...nd,...ne->...de", v, v, precision=hi)
    spread = 2.0 * count * jnp.sum(along * along, axis=-1) + jnp.sum(vtv * vtv, axis=(-2, -1))
    mean = jnp.sum(u_mean * u_mean, axis=-1)
    n_pairs = jnp.maximum(count * count, 1.0)
    if not include_diagonal:
        diag = jnp.where(nonzero, 1.0, 0.0) * w
        off_pairs = jnp.maximum(count * (count - 1.0), 1.0)
        off_mean = (mean * count * count - jnp.sum(diag, axis=-1)) / off_pairs
        spread = (
            spread
            + count * count * (mean - off_mean) ** 2
            - jnp.sum(w * (diag - off_mean[..., None]) ** 2, axis=-1)
        )
        mean, n_pairs = off_mean, off_pairs
    return mean, jnp.sqrt(jnp.maximum(spread / n_pairs, 0.0))


@functools.partial(jax.jit, static_argnames=("include_diagonal",))
def _cosine_similarity_stats(x, valid, include_diagonal):
    gram, centre = distances.centred_gram(x, valid)
    return cosine_stats_from_gram(x, valid, gram, centre, include_diagonal)


INCLUDE_DIAGONAL = Option(
    "include_diagonal",
    bool,
    True,
    "Cosine statistics over the full N x N matrix, diagonal included (the paper's definition).",
)


def cosine_similarity_stats(x, mask=None, *, include_diagonal=INCLUDE_DIAGONAL.default):
    """Mean and standard deviation of the cosine-similarity matrix of each cloud.

    Only pairs of valid points (mask True) count; zero vectors have cosine 0
    (as scikit-learn's cosine_similarity).

    Args:
      x: [..., N, D] float points.
      mask: bool [..., N] valid points (None: all).
      include_diagonal: the paper's definition includes the diagonal.

    Returns:
      (mean, std) [...] float32.

    Reference: the paper's section on cosine similarity (Viswanathan et al. 2025).
    """
    x = validation.as_points(x, "x")
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask, min_valid=1 if include_diagonal else 2)
    return _cosine_similarity_stats(x, distances.valid_or_all(x, mask), bool(include_diagonal))


def stats(ctx, diagonal=None):
    """(mean, std) [C] of the chunk's cosine matrices (diagonal included or not; None:
    the include_diagonal option), computed once per context (the matrix entropy at
    alpha = 2 reads them too)."""
    if diagonal is None:
        diagonal = ctx.options["include_diagonal"]
    return ctx.cosine_stats(diagonal)


def _cosine_observable(ctx):
    mean, std = stats(ctx)
    return {"cos_mean": mean, "cos_std": std}


OBSERVABLE = Observable(
    name="cosine",
    compute=_cosine_observable,
    fields=(
        Field(
            "cos_mean", (), "mean cosine similarity between tokens, embedding output first.", "L+1"
        ),
        Field("cos_std", (), "its standard deviation over token pairs.", "L+1"),
    ),
    consumes=("points", "gram"),
    doc=cosine_stats_from_gram.__doc__,
    reference="the paper's Sec. on cosine similarity (full N x N matrix, diagonal included)",
    reduce="mean / std over all pairs of valid tokens",
    options=(INCLUDE_DIAGONAL,),
    embedding=True,
    paper=True,
    pooled=True,
    report=(
        ReportSection(
            "Cosine similarity across layers",
            figure=sections.plot,
            needs=("cos_mean",),
            file="cosine_vs_layer.png",
            kinds=(PER_PROMPT, POOLED),
        ),
    ),
)
