"""Linear predictivity: the cross-validated R^2 of a ridge regression of y on x.

Layer b of y is predicted from layer a of x by ridge regression with an intercept
(scikit-learn's ``Ridge(alpha=ridge, fit_intercept=True)``: the intercept is not
penalised), fitted on the training part of each fold of
``KFold(n_splits=folds, shuffle=True, random_state=seed)`` over the valid points
(`fold_groups`, the same algorithm on the host, so the folds are scikit-learn's), and
scored on the held-out points, pooled over folds and output dimensions:

  R^2 = 1 - sum_f sum_{i in E_f} |y_i - y^_i|^2 / sum_f sum_{i in E_f} |y_i - mean_{T_f} y|^2,

E_f the test points of fold f, T_f its training points, y^_i the prediction of the
model fitted on T_f. The baseline of each fold is its training mean, so predicting
that mean scores 0 and a perfect prediction 1; unlike scikit-learn's ``r2_score``
per fold it is defined for test folds of one point. Not symmetric: entry [a, b]
predicts layer b of y from layer a of x, the reverse direction is the transposed call.

Everything that involves only x is done once per layer of x and fold and shared by
the Lb layers of y (`layer_stats`): with each layer centred on the mean of its valid
points (ridge with an intercept is unchanged by shifting x or y) and the points
grouped by fold (X_f [Q, Dx], Q = ceil(N / folds), zero rows as padding),

* the fold Grams S_f = X_f^T X_f and sums s_f; the training Gram
  A_f = sum_{g != f} S_g - n_T mu_T mu_T^T + ridge I, mu_T = (s - s_f) / n_T, and its
  Cholesky factor;
* G_f = (X_f - mu_T) A_f^{-1} [Q, Dx] (two triangular solves), the test points'
  rows of the hat map.

Per pair only products with y remain (`pair_scores`): P_f = X_f^T Y_f, the training
cross-product B_f = sum_g P_g - P_f - (s - s_f)(t - t_f)^T / n_T (t the sums of y),
and the held-out residuals Y_f - nu_T - G_f B_f, nu_T = (t - t_f) / n_T.

Cost (FLOPs, D = Dx = Dy, N points, F folds): per layer 4 N D^2 + F D^3 / 3 (fold
Grams, Cholesky factors, the solves for G); per pair 4 N Dx Dy (P_f and G_f B_f),
plus O(F Dx Dy). At 33 x 33 layers of D = 4,096, N = 10,000, F = 5: 7.9e11 per layer
(5.2e13 for both stacks, since a stack's statistics serve either side), 6.7e11 per
pair, 7.3e14 for the 1,089 pairs: about 11 s at the 67 TFLOP/s float32 peak of an
H100 SXM, extrapolated by FLOPs. Memory: 2 N D floats stored per layer (the grouped
points and G: 328 MB at that size), and per pair in flight P_f and B_f (2 F Dx Dy,
671 MB) and the residuals (N Dy, 164 MB).

Permutation null (`permute`): rows of y reordered; y's statistics used as the
second side are its grouped points only, so the permuted ones are a gather (the
permuted stack is only ever the second side: its G is dropped, not recomputed).

Numerics: float32 Cholesky; the predictions agree with a float64 solve to about
eps_32 times the condition number of A_f on the directions that carry y, so a ridge
small against the scale of x's covariance loses digits (ridge = 0 needs every
training fold's centred x to have full column rank, otherwise the score is NaN or
meaningless).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.errors import ArgumentError
from geom_jax.metrics import validation
from geom_jax.metrics.declare.observable import Option
from geom_jax.metrics.similarity import cka_hsic, measure

HIGHEST = lax.Precision.HIGHEST

PAIR_BATCH_ELEMENTS = 2**24
"""Float32 intermediates (fold cross-products and residuals) per vectorised batch of
layer pairs."""


def _check_folds(v):
    if v < 2:
        raise ArgumentError("{folds} must be an integer >= 2, got {v!r}", "folds", v=v)


def _check_ridge(v):
    if not v >= 0 or not np.isfinite(v):
        raise ArgumentError("{ridge} must be a finite number >= 0, got {v!r}", "ridge", v=v)


def _check_seed(v):
    if not 0 <= v < 2**32:
        raise ArgumentError("{seed} must be an integer in [0, 2^32), got {v!r}", "seed", v=v)


FOLDS = Option(
    "folds",
    int,
    5,
    "Linear predictivity: cross-validation folds (scikit-learn KFold, shuffled) over the "
    "valid points.",
    check=_check_folds,
)
RIDGE = Option(
    "ridge",
    float,
    1.0,
    "Linear predictivity: the ridge penalty (scikit-learn Ridge alpha; the intercept is not "
    "penalised).",
    check=_check_ridge,
)
SEED = Option(
    "seed",
    int,
    0,
    "Linear predictivity: KFold's random_state (which points share a fold).",
    check=_check_seed,
)


def fold_groups_host(valid, folds, seed):
    """NumPy int32 [F, Q] (Q = ceil(N / F)): the test points of each fold of
    scikit-learn's ``KFold(n_splits=folds, shuffle=True, random_state=seed)`` over the
    valid points of valid [N] (in index order), ascending, padded with -1; all -1
    when fewer than F points are valid.

    KFold shuffles arange(m) with ``np.random.RandomState(seed)``; fold f takes the
    next m // F (+ 1 for the first m % F folds) of the shuffled positions."""
    valid = np.asarray(valid, bool)
    n = valid.shape[-1]
    out = np.full((folds, -(-n // folds)), -1, np.int32)
    where = np.flatnonzero(valid)
    m = len(where)
    if m < folds:
        return out
    order = np.random.RandomState(seed).permutation(m)
    sizes = np.full(folds, m // folds)
    sizes[: m % folds] += 1
    start = 0
    for f, size in enumerate(sizes):
        out[f, :size] = np.sort(where[order[start : start + size]])
        start += size
    return out


def fold_groups(valid, folds, seed):
    """int32 [F, Q]: `fold_groups_host` of valid [N], also under jit (on the host)."""
    n = valid.shape[-1]
    shape = jax.ShapeDtypeStruct((folds, -(-n // folds)), jnp.int32)
    return jax.pure_callback(
        lambda v: fold_groups_host(v, folds, seed), shape, valid, vmap_method="sequential"
    )


def _counts(groups):
    """(held-out rows [F, Q] bool, n_T [F] float32: training points per fold)."""
    ok = groups >= 0
    n_e = jnp.sum(ok, axis=1).astype(jnp.float32)
    return ok, jnp.sum(n_e) - n_e


def _projection(xg, ok, n_t, ridge):
    """G [F, Q, D] of one layer's grouped centred points xg [F, Q, D]: row q of fold f
    is (x - mu_T) A_f^{-1}, zero at padding."""
    d = xg.shape[-1]
    s_f = jnp.sum(xg, axis=1)
    mu = (jnp.sum(s_f, axis=0) - s_f) / n_t[:, None]
    gram_f = jnp.einsum("fqd,fqe->fde", xg, xg, precision=HIGHEST)
    a = jnp.sum(gram_f, axis=0) - gram_f
    a = a - n_t[:, None, None] * mu[:, :, None] * mu[:, None, :] + ridge * jnp.eye(d)
    chol = jnp.linalg.cholesky(0.5 * (a + jnp.swapaxes(a, -1, -2)))
    r = jnp.where(ok[:, :, None], xg - mu[:, None, :], 0.0)
    h = lax.linalg.triangular_solve(chol, r, left_side=False, lower=True, transpose_a=True)
    return lax.linalg.triangular_solve(chol, h, left_side=False, lower=True)


def layer_stats(x, valid, *, folds, ridge, seed):
    """Per layer of x [L, N, D]: {"points": the points centred on their valid mean and
    grouped by test fold [L, F, Q, D], "proj": G [L, F, Q, D]} (zero at padding)."""
    groups = fold_groups(valid, folds, seed)
    ok, n_t = _counts(groups)
    xc = cka_hsic.centred(x, valid)
    xg = jnp.where(ok[None, :, :, None], jnp.take(xc, jnp.maximum(groups, 0), axis=1), 0.0)
    proj = lax.map(lambda one: _projection(one, ok, n_t, ridge), xg)
    return {"points": xg, "proj": proj}


def _y_terms(yg, ok, n_t):
    """Per layer of grouped y [L, F, Q, Dy]: (the training sums t - t_f [L, F, Dy], the
    sum of squared deviations of held-out y from the training means [L])."""
    t_f = jnp.sum(yg, axis=2)
    t_rest = jnp.sum(t_f, axis=1, keepdims=True) - t_f
    dev = jnp.where(ok[None, :, :, None], yg - (t_rest / n_t[None, :, None])[:, :, None], 0.0)
    return t_rest, jnp.sum(dev * dev, axis=(1, 2, 3))


def _sse(xg, g, yg, t_rest, ok, n_t):
    """Held-out squared error of one pair: x's grouped points and G [F, Q, Dx], y's
    grouped points [F, Q, Dy] and training sums t - t_f [F, Dy]."""
    p = jnp.einsum("fqd,fqe->fde", xg, yg, precision=HIGHEST)
    s_rest = jnp.sum(xg, axis=(0, 1))[None] - jnp.sum(xg, axis=1)
    b = jnp.sum(p, axis=0) - p - s_rest[:, :, None] * (t_rest / n_t[:, None])[:, None, :]
    pred = jnp.einsum("fqd,fde->fqe", g, b, precision=HIGHEST)
    res = jnp.where(ok[:, :, None], yg - (t_rest / n_t[:, None])[:, None, :] - pred, 0.0)
    return jnp.sum(res * res)


def pair_scores(stats_a, stats_b, valid, *, folds, ridge, seed):
    """Held-out R^2 [La, Lb]: layer b of stats_b (None: stats_a) predicted from layer a
    of stats_a; one flat loop over the pairs, vectorised over batches of them."""
    groups = fold_groups(valid, folds, seed)
    ok, n_t = _counts(groups)
    xg, g = stats_a["points"], stats_a["proj"]
    yg = xg if stats_b is None else stats_b["points"]
    t_rest, sst = _y_terms(yg, ok, n_t)
    la, lb = xg.shape[0], yg.shape[0]
    f, q, dx = xg.shape[1:]
    dy = yg.shape[-1]
    pa, pb = np.divmod(np.arange(la * lb, dtype=np.int32), lb)
    per_pair = 2 * f * dx * dy + 2 * f * q * dy
    batch = int(max(1, min(la * lb, PAIR_BATCH_ELEMENTS // per_pair)))

    def one(p):
        return _sse(xg[p[0]], g[p[0]], yg[p[1]], t_rest[p[1]], ok, n_t)

    sse = lax.map(one, (jnp.asarray(pa), jnp.asarray(pb)), batch_size=batch).reshape(la, lb)
    return 1.0 - sse / sst[None, :]


def permute(stats, perm, valid, *, folds, ridge, seed):
    """y's grouped points with its rows reordered as points[perm] (a gather of the
    stored rows; "proj" None: a permuted stack is only the second side)."""
    groups = fold_groups(valid, folds, seed)
    ok = groups >= 0
    n = valid.shape[-1]
    n_layers, f, q, d = stats["points"].shape
    flat = jnp.where(ok, groups, n).reshape(-1)
    slot = jnp.zeros(n + 1, jnp.int32).at[flat].set(jnp.arange(f * q, dtype=jnp.int32))
    src = slot[perm[jnp.maximum(groups, 0)]].reshape(-1)
    moved = jnp.take(stats["points"].reshape(n_layers, f * q, d), src, axis=1)
    return {
        "points": jnp.where(ok[None, :, :, None], moved.reshape(stats["points"].shape), 0.0),
        "proj": None,
    }


def _min_points(options):
    return options["folds"], f"folds={options['folds']} needs"


LINEAR_PREDICTIVITY = measure.SimilarityMeasure(
    name="linear_predictivity",
    doc="Cross-validated R^2 of a ridge regression (with intercept) of layer b of y on "
    "layer a of x, pooled over held-out points and output dimensions.",
    reference="ridge regression with k-fold cross-validation (e.g. Schrimpf et al. 2018, "
    "Brain-Score, doi:10.1101/407007); checked against scikit-learn Ridge and KFold",
    layer_stats=layer_stats,
    pair_scores=pair_scores,
    options=(FOLDS, RIDGE, SEED),
    permute=permute,
    similarity=True,
    best=1.0,
    min_points=_min_points,
)


def _check_fold_counts(x, mask, folds):
    """ArgumentError when folds exceeds the valid points of a cloud (for a concrete
    mask; under jit such a cloud scores NaN)."""
    n = np.shape(x)[-2]
    if mask is not None and not validation.is_concrete(mask):
        return
    least = n if mask is None else int(np.asarray(mask).reshape(-1, n).sum(-1).min(initial=n))
    if folds > least:
        raise ArgumentError(
            "{folds}={value} is more than the {m} valid points of a cloud",
            "folds",
            value=folds,
            m=least,
        )


def linear_predictivity(
    x, y, mask=None, *, folds=FOLDS.default, ridge=RIDGE.default, seed=SEED.default
):
    """Cross-validated linear predictivity of y [..., N, Dy] from x [..., N, Dx].

    Ridge regression with an intercept of y on x, fitted on each training part of a
    shuffled k-fold split of the valid points, scored on the held-out points:
    1 - (sum of squared held-out errors) / (sum of squared deviations of held-out y
    from the training-fold mean), pooled over folds and output dimensions.

    Args:
      x: float [..., N, Dx], the predictors.
      y: float [..., N, Dy], the same points, the predicted representation.
      mask: bool [..., N] valid points (None: all; at least ``folds`` of them).
      folds: number of folds (>= 2), scikit-learn's ``KFold(n_splits=folds,
        shuffle=True, random_state=seed)`` over the valid points in index order.
      ridge: the penalty (>= 0), scikit-learn's ``Ridge(alpha=ridge)``.
      seed: KFold's random_state (0 <= seed < 2^32).

    Returns:
      float32 [...], at most 1 (perfect held-out prediction); 0 for predicting the
      training mean; negative when worse. NaN when y is constant over the valid
      points (or, with ridge = 0, a training fold's x is rank deficient).

    Example:
      >>> z = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
      >>> round(float(linear_predictivity(z, np.tanh(z))), 3)
      0.924

    Reference: cross-validated ridge regression as a neural predictivity score
    (Schrimpf et al. 2018, Brain-Score, bioRxiv doi:10.1101/407007; Yamins et al.
    2014, PNAS, doi:10.1073/pnas.1403112111). Checked against scikit-learn's
    ``Ridge(alpha=ridge, fit_intercept=True)`` fitted on each ``KFold`` training
    split in float64.
    """
    options = LINEAR_PREDICTIVITY.resolve({"folds": folds, "ridge": ridge, "seed": seed})
    _check_fold_counts(validation.check_points(x, "x"), mask, options["folds"])
    return measure.evaluate(LINEAR_PREDICTIVITY.name, x, y, mask, **options)
