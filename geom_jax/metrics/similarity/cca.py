"""Canonical-correlation similarities: SVCCA (Raghu et al. 2017) and projection-weighted
CCA (Morcos et al. 2018), as google/svcca computes them.

With X_c = U_x diag(s_x) V_x^T the centred SVD of a layer over its m valid points
(``layer_bases.bases``), the canonical correlations between the columns of X_c and
Y_c are the singular values of U_x^T U_y (whitening a cloud leaves its orthonormal
basis U); restricting a side to its leading k directions restricts U to its first k
columns. Per layer: one SVD; per pair: the K_x x K_y matrix U_x^T U_y and its SVD
(values only for SVCCA; vectors for PWCCA, whose weights also need one QR of K x K and
a K x K by K x D product).

google/svcca's layout is [neurons, datapoints]; here it is [datapoints, neurons]
(x [..., N, D]).
"""

import jax.numpy as jnp

from geom_jax.errors import value_error
from geom_jax.metrics.declare.observable import Option
from geom_jax.metrics.neighbours import distances
from geom_jax.metrics.similarity import cka_hsic, layer_bases, measure


def _check_keep(keep):
    if not 0.0 < keep <= 1.0:
        raise value_error("keep", keep, "must be in (0, 1] (the fraction of variance SVCCA keeps)")


KEEP = Option(
    "keep",
    float,
    0.99,
    "SVCCA: fraction of each layer's variance its leading SVD directions keep (1: all).",
    check=_check_keep,
)


def kept_directions(s, rank, keep):
    """bool [..., K]: the fewest leading directions whose variance (s^2) reaches the
    fraction keep of the total, i.e. those with less than keep of it before them;
    keep = 1: every direction of the numerical rank."""
    if keep >= 1.0:
        return rank
    var = s * s
    before = jnp.cumsum(var, axis=-1) - var
    return rank & (before < keep * jnp.sum(var, axis=-1, keepdims=True))


def _svcca_stats(x, valid, keep=KEEP.default):
    u, s, _, rank = layer_bases.bases(x, valid)
    kept = kept_directions(s, rank, keep)
    return {"u": jnp.where(kept[:, None, :], u, 0.0), "k": jnp.sum(kept, axis=-1)}


def _svcca_permute(stats, perm, valid, **options):
    return {"u": cka_hsic.permute_rows(stats["u"], perm), "k": stats["k"]}


def mean_correlation(ua, ub, ka, kb):
    """Mean of the min(ka, kb) canonical correlations between the kept bases ua, ub."""
    sigma = jnp.linalg.svd(layer_bases.cross(ua, ub), compute_uv=False)
    r = jnp.minimum(ka, kb)
    return jnp.sum(jnp.where(jnp.arange(sigma.shape[0]) < r, sigma, 0.0)) / r


def _svcca_scores(stats_a, stats_b, valid, **options):
    def one(sa, sb):
        score = mean_correlation(sa["u"], sb["u"], sa["k"], sb["k"])
        return score, score

    return layer_bases.pair_matrix(stats_a, stats_b, one, stats_a["k"] > 0, 1.0)


def _pwcca_stats(x, valid):
    u, s, vt, rank = layer_bases.bases(x, valid)
    return {"u": u, "s": s, "sv": s[..., None] * vt, "rank": jnp.sum(rank, axis=-1)}


def _pwcca_permute(stats, perm, valid, **options):
    return dict(stats, u=cka_hsic.permute_rows(stats["u"], perm))


def projection_weighted(sigma, vecs, side):
    """compute_pwcca's weighted mean of the canonical correlations sigma [K], weighting
    with the side whose singular vectors of U_x^T U_y are vecs [K, K] (columns, in the
    order of sigma) and whose statistics are ``side``.

    google/svcca orthonormalises (QR, in the order of sigma) the rows of u^T X_c, u the
    left singular vectors of Sigma_xx^-1/2 Sigma_xy Sigma_yy^-1/2 = V_x (U_x^T U_y)
    V_y^T, so u = V_x vecs and X_c u = U_x diag(s_x) vecs: in the basis U_x those are the
    columns of diag(s_x) vecs; the weight of direction i is sum_j |<p_i, x_j>| over the
    neurons x_j (columns of X_c), the columns of diag(s_x) V_x^T in that basis."""
    q, _ = jnp.linalg.qr(side["s"][:, None] * vecs)
    proj = jnp.einsum("ki,kd->id", q, side["sv"], precision=distances.HIGHEST)
    weights = jnp.sum(jnp.abs(proj), axis=1)
    return jnp.sum(weights * sigma) / jnp.sum(weights)


def _pwcca_scores(stats_a, stats_b, valid, **options):
    other = stats_a if stats_b is None else stats_b
    a_weighs = stats_a["sv"].shape[-1] <= other["sv"].shape[-1]

    def one(sa, sb):
        p, sigma, qt = jnp.linalg.svd(layer_bases.cross(sa["u"], sb["u"]), full_matrices=False)
        if stats_b is None:  # Dx = Dy: (a, b) weighs with a, (b, a) with b
            return projection_weighted(sigma, p, sa), projection_weighted(sigma, qt.T, sb)
        score = (
            projection_weighted(sigma, p, sa) if a_weighs else projection_weighted(sigma, qt.T, sb)
        )
        return score, score

    return layer_bases.pair_matrix(stats_a, stats_b, one, stats_a["rank"] > 0, 1.0)


SVCCA = measure.SimilarityMeasure(
    name="svcca",
    doc="SVCCA: mean canonical correlation of the leading directions keeping `keep` variance.",
    reference=(
        "Raghu et al. 2017, arXiv 1706.05806; google/svcca cca_core.get_cca_similarity "
        "(epsilon=0) after its tutorial's SVD step (commit 1f3fbf19)"
    ),
    layer_stats=_svcca_stats,
    pair_scores=_svcca_scores,
    options=(KEEP,),
    permute=_svcca_permute,
)

PWCCA = measure.SimilarityMeasure(
    name="pwcca",
    doc="Projection-weighted CCA: canonical correlations weighted by the narrower side.",
    reference=(
        "Morcos, Raghu and Bengio 2018, arXiv 1806.05759; google/svcca pwcca.compute_pwcca "
        "(epsilon=0) on the centred points (commit 1f3fbf19)"
    ),
    layer_stats=_pwcca_stats,
    pair_scores=_pwcca_scores,
    permute=_pwcca_permute,
)


def svcca(x, y, mask=None, *, keep=KEEP.default):
    """SVCCA similarity of x [..., N, Dx] and y [..., N, Dy].

    Each side, centred on the valid points, is reduced by its SVD to the fewest
    leading directions whose variance reaches the fraction ``keep`` of its total
    (k_x, k_y); the score is the mean of the min(k_x, k_y) canonical correlations
    between the two reduced sides. Invariant to translations, isotropic scalings and
    orthogonal maps of either side, and with keep = 1 to any invertible linear map.

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points.
      mask: bool [..., N] valid points (None: all); other rows may hold anything.
      keep: in (0, 1]; 1 keeps every direction of the numerical rank (plain mean CCA).

    Returns:
      float32 [...] in [0, 1]; 1 for identical clouds; within 3e-7 of float64 on the
      test cases and at N = 5,000, D = 576. Directions with a singular value at most
      s_max max(m, D) eps_float32 count as zero. Where a cumulative
      variance fraction lies within ~1e-6 of keep, float32 may keep one direction more
      or less than float64.

    Reference: Raghu, Gilmer, Yosinski and Sohl-Dickstein 2017, SVCCA: Singular Vector
    Canonical Correlation Analysis for Deep Learning Dynamics and Interpretability,
    NeurIPS, arXiv 1706.05806. Equals google/svcca's
    ``np.mean(cca_core.get_cca_similarity(s[:k, None] * V[:k], ..., epsilon=0)
    ["cca_coef1"])`` after the SVD of its tutorial (commit 1f3fbf19), which keeps a
    fixed k there; its tutorial's epsilon=1e-10 adds 1e-10 to the diagonal of the
    max-normalised covariances, which moves the score by < 1e-8 on the test cases.
    """
    return measure.evaluate("svcca", x, y, mask, keep=keep)


def pwcca(x, y, mask=None):
    """Projection-weighted CCA of x [..., N, Dx] and y [..., N, Dy].

    The canonical correlations rho_i between the centred valid points of x and y,
    weighted by alpha_i / sum(alpha), alpha_i = sum_j |<p_i, z_j>| over the neurons z_j
    (columns) of the side z with fewer neurons (x when Dx = Dy), p_i the
    orthonormalised (QR, in the order of rho) directions u_i^T Z_c of google/svcca's
    ``compute_pwcca``. Not symmetric when Dx = Dy: pwcca(x, y) weighs with x,
    pwcca(y, x) with y; when Dx != Dy both weigh with the narrower side and agree.

    Args:
      x, y: float [..., N, Dx] and [..., N, Dy], the same points.
      mask: bool [..., N] valid points (None: all); other rows may hold anything.

    Returns:
      float32 [...] in [0, 1]; 1 for identical clouds. Within ~1e-7 of float64 on
      the test cases and at N = 5,000, D = 576; up to ~2e-6 where two canonical
      correlations nearly tie (gap 4e-3): the weights of such a pair follow a rotation
      within its plane that float32 rounding of U_x^T U_y sets, and their sum is an L1
      sum over the neurons, not invariant to it.

    Reference: Morcos, Raghu and Bengio 2018, Insights on representational similarity
    in neural networks with canonical correlation, NeurIPS, arXiv 1806.05759. Equals
    google/svcca's ``pwcca.compute_pwcca(x_c.T, y_c.T, epsilon=0)`` on the centred
    points (commit 1f3fbf19), with its branch for a narrower y taken as the mirror of
    the x branch (there it indexes acts1 with y's indices and raises IndexError;
    google/svcca pull request 9). Deliberate difference: compute_pwcca adds each
    neuron's mean back to the directions and projects the uncentred activations, so
    on uncentred inputs its value depends on the signs LAPACK gives the singular
    vectors (0.848 to 0.871 over sign flips on one test cloud); centring first is its
    one well-defined reading and makes the score translation invariant. Like
    compute_pwcca (and unlike the paper's h_i = Sigma_xx^-1/2 u_i), the directions are
    not whitened before the QR.
    """
    return measure.evaluate("pwcca", x, y, mask)
