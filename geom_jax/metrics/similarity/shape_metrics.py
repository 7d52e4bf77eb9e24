"""Shape distances between two representations of the same points: the orthogonal
Procrustes distance and netrep's angular shape metric with partial whitening.

Both compare the centred clouds X [m, Dx], Y [m, Dy] of the m valid points after an
optimal alignment; the narrower is zero-padded to the wider (netrep's ``zero_pad``),
which changes no value below. With X = U_x diag(s_x) V_x^T the centred SVD of a layer
(``layer_bases.bases``) and a per-direction weight w_x, the aligned clouds are
X_w = U_x diag(w_x) (up to a rotation on the right, which no score sees), and

  c = ||diag(w_x) U_x^T U_y diag(w_y)||_* / (||w_x|| ||w_y||)

is the cosine of the best alignment: Procrustes is sqrt(2 - 2c) with w = s (unit
Frobenius norms), the shape metric arccos(c). Per layer: the weights and the
weighted basis A = U diag(w) / ||w||; per pair: the singular values of A_x^T A_y.
With w = s (Procrustes, alpha = 1) A is X_c / ||X_c||_F itself and no SVD is needed.
"""

import jax.numpy as jnp
from jax import lax

from geom_jax.errors import value_error
from geom_jax.metrics.declare.observable import Option
from geom_jax.metrics.similarity import cka_hsic, layer_bases, measure

EIGVAL_TOL = 1e-7
"""netrep's ``whiten(eigval_tol=1e-7)``: eigenvalues of X^T X (not divided by m) are
clipped to it from below, an absolute threshold (it matters only for clouds with
squared singular values below 1e-7, e.g. coordinates of order 1e-4)."""


def _check_alpha(alpha):
    if not 0.0 <= alpha <= 1.0:
        raise value_error(
            "alpha", alpha, "must be in [0, 1] (1: rotations only, 0: full whitening)"
        )


ALPHA = Option(
    "alpha",
    float,
    1.0,
    "Partial whitening of the shape metric: 1 rotations only, 0 full whitening (CCA-like).",
    check=_check_alpha,
)


def _rotation_only(alpha):
    """netrep's whiten returns the identity for alpha > 1 - eigval_tol."""
    return alpha > 1.0 - EIGVAL_TOL


def whitening_weights(s, rank, alpha):
    """Singular values of the partially whitened cloud X Z, netrep's
    Z = V diag(alpha + (1 - alpha) lam^-1/2) V^T with lam = max(s^2, 1e-7) (its
    ``preserve_variance`` rescaling, one factor per cloud, leaves every angle as it is);
    zero for numerically zero directions (netrep's float64 gives them ~1e-13)."""
    lam = jnp.maximum(s * s, EIGVAL_TOL)
    return jnp.where(rank, s * (alpha + (1.0 - alpha) * lax.rsqrt(lam)), 0.0)


def _unit(a, axes):
    norm = jnp.sqrt(jnp.sum(a * a, axis=axes, keepdims=True))
    return a / norm, norm.reshape(a.shape[0]) > 0


def aligned_stats(x, valid, alpha=1.0):
    """Per layer of x [L, N, D]: {"a": A [L, N, K] the unit-norm weighted basis,
    "ok": [L] bool (a direction with nonzero weight)}."""
    if _rotation_only(alpha):
        a, ok = _unit(cka_hsic.centred(x, valid), (1, 2))
        return {"a": a, "ok": ok}
    u, s, _, rank = layer_bases.bases(x, valid)
    w, ok = _unit(whitening_weights(s, rank, alpha), (1,))
    return {"a": u * w[:, None, :], "ok": ok}


def _permute(stats, perm, valid, **options):
    return {"a": cka_hsic.permute_rows(stats["a"], perm), "ok": stats["ok"]}


def alignment_cosine(a, b):
    """c = ||A_a^T A_b||_* of one pair of unit-norm weighted bases."""
    return jnp.sum(jnp.linalg.svd(layer_bases.cross(a, b), compute_uv=False))


def _scores(to_score, best):
    def pair_scores(stats_a, stats_b, valid, **options):
        def one(sa, sb):
            score = to_score(alignment_cosine(sa["a"], sb["a"]))
            return score, score

        return layer_bases.pair_matrix(stats_a, stats_b, one, stats_a["ok"], best)

    return pair_scores


def procrustes_from_cosine(c):
    return jnp.sqrt(jnp.maximum(2.0 - 2.0 * c, 0.0))


def angle_from_cosine(c):
    return jnp.arccos(jnp.clip(c, -1.0, 1.0))


def _procrustes_stats(x, valid):
    return aligned_stats(x, valid, 1.0)


PROCRUSTES = measure.SimilarityMeasure(
    name="procrustes",
    doc="Orthogonal Procrustes distance of the centred, unit-norm clouds, in [0, sqrt 2].",
    reference=(
        "Ding et al. 2021, arXiv 2108.01661; Williams et al. 2021, arXiv 2110.14739; "
        "checked against scipy.linalg.orthogonal_procrustes and netrep LinearMetric(alpha=1, "
        "score_method='euclidean')"
    ),
    layer_stats=_procrustes_stats,
    pair_scores=_scores(procrustes_from_cosine, 0.0),
    permute=_permute,
    similarity=False,
    best=0.0,
)

SHAPE_METRIC = measure.SimilarityMeasure(
    name="shape_metric",
    doc="netrep's angular shape distance with partial whitening alpha, in [0, pi/2].",
    reference=(
        "Williams et al. 2021, Generalized Shape Metrics on Neural Representations, "
        "arXiv 2110.14739; netrep LinearMetric(alpha, score_method='angular') fit and "
        "scored on the same points (commit 0186b8a7)"
    ),
    layer_stats=aligned_stats,
    pair_scores=_scores(angle_from_cosine, 0.0),
    options=(ALPHA,),
    permute=_permute,
    similarity=False,
    best=0.0,
)


def procrustes(x, y, mask=None):
    """Orthogonal Procrustes distance between x [..., N, Dx] and y [..., N, Dy].

    min over orthogonal Q of ||X - Y Q||_F = sqrt(2 - 2 ||X^T Y||_*), X and Y the
    valid points centred and scaled to unit Frobenius norm, the narrower zero-padded to
    the wider. Invariant to translations, isotropic scalings and orthogonal maps of
    either side.

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points.
      mask: bool [..., N] valid points (None: all); other rows may hold anything.

    Returns:
      float32 [...] in [0, sqrt 2] (||X^T Y||_* >= 0); 0 for identical clouds. Near 0
      the float32 value carries an absolute error of about sqrt(2 * 1e-6) ~ 1e-3 (the
      square root of the rounding of c); a layer of a stack compared with that stack
      itself scores exactly 0.

    Reference: Ding, Denain and Steinhardt 2021, Grounding Representation Similarity
    with Statistical Testing, arXiv 2108.01661; Williams et al. 2021, arXiv 2110.14739
    (netrep ``LinearMetric(alpha=1, score_method="euclidean")`` on the normalised
    clouds); checked against ``scipy.linalg.orthogonal_procrustes`` in float64.
    """
    return measure.evaluate("procrustes", x, y, mask)


def shape_metric(x, y, mask=None, *, alpha=ALPHA.default):
    """netrep's angular shape distance between x [..., N, Dx] and y [..., N, Dy].

    Each side is centred and partially whitened, X_w = X_c Z_x with
    Z_x = V diag(alpha + (1 - alpha) lam^-1/2) V^T (lam, V the eigenpairs of X_c^T X_c,
    lam clipped at 1e-7), the narrower zero-padded; the distance is the angle
    arccos(||X_w^T Y_w||_* / (||X_w||_F ||Y_w||_F)) after the best rotation, as
    ``LinearMetric(alpha, center_columns=True, zero_pad=True, score_method="angular")
    .fit(X, Y).score(X, Y)`` on the valid points (no train / test split).

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points.
      mask: bool [..., N] valid points (None: all); other rows may hold anything.
      alpha: in [0, 1]. netrep's convention: 1 aligns by rotations only (the angular
        Procrustes distance, arccos(1 - procrustes^2 / 2)), 0 whitens fully and allows
        any invertible linear map (arccos of the sum of the canonical correlations
        over sqrt(rank_x rank_y), CCA-like); in between, the whitening
        alpha I + (1 - alpha) C^-1/2.

    Returns:
      float32 [...] in [0, pi/2] radians. Invariant to translations and orthogonal
      maps of either side; for alpha = 1 also to isotropic scalings, for alpha = 0 to
      any invertible linear map. For 0 < alpha < 1 netrep's whitening mixes I with
      (X_c^T X_c)^-1/2, not divided by m, so the score depends on each cloud's overall
      scale and on m (netrep: 0.8548 against 0.8541 for x and 10 x on a test cloud),
      and for clouds whose squared singular values fall below 1e-7 on the clipping of
      them. Directions with a singular value at most
      s_max max(m, D) eps_float32 are dropped (netrep keeps them at ~1e-13 in
      float64); with alpha < 1 such near-null directions would be whitened to full
      weight from float32 noise. Near 0 the absolute error is ~1e-3, as for
      `procrustes`.

    Reference: Williams, Kunz, Kornblith and Linderman 2021, Generalized Shape Metrics
    on Neural Representations, NeurIPS, arXiv 2110.14739; netrep ``LinearMetric``
    (github.com/ahwillia/netrep, commit 0186b8a7) checked in float64.
    """
    return measure.evaluate("shape_metric", x, y, mask, alpha=alpha)
