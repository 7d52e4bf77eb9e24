"""Local intrinsic dimension from the k nearest distinct neighbours: MLE and TLE.

Both use the exact distances T_1 <= ... <= T_k of each distinct valid point
to its k nearest distinct valid points (first occurrence kept, as GRIDE and
TwoNN), and return (global [...], pointwise [..., N]) with NaN at padding
and duplicates.

* MLE (Levina & Bickel 2005, NeurIPS, eq. 8): m_i = [1/(k-1) sum_{j<k}
  log(T_k / T_j)]^-1; global = the inverse of the mean inverse (MacKay &
  Ghahramani's correction), as scikit-dimension 0.5 ``MLE()``.
* TLE (Amsaleg et al. 2019, "Intrinsic dimensionality estimation within
  tight localities", SDM): the tight-locality estimator with epsilon 1e-4,
  as scikit-dimension 0.5 ``TLE()``; global = mean of pointwise. The
  distances between the k neighbours come from Gram entries
  (``ctx.neighbour_sq_distances``: the centred Gram matrix, or the points).
"""

import jax.numpy as jnp
import numpy as np

from geom_jax.errors import ArgumentError
from geom_jax.metrics import backends, validation
from geom_jax.metrics.declare.observable import (
    PER_PROMPT,
    POOLED,
    Field,
    Observable,
    Option,
    ReportSection,
)
from geom_jax.metrics.declare.options import SELECTION, renamed_keywords
from geom_jax.metrics.measures.sections import local_id as sections
from geom_jax.metrics.neighbours import duplicates

TLE_EPSILON = 1e-4


def mle_from_distances(t, keep):
    """(global [C], pointwise [C, N]) from sorted neighbour distances t [C, N, k]."""
    k = t.shape[-1]
    tk = t[..., -1:]
    s = jnp.sum(jnp.log(tk / jnp.where(keep[..., None], t[..., :-1], 1.0)), axis=-1)
    inv = s / (k - 1)
    pw = jnp.where(keep, 1.0 / jnp.where(keep, inv, 1.0), jnp.nan)
    count = jnp.sum(keep, axis=-1)
    mean_inv = jnp.sum(jnp.where(keep, inv, 0.0), axis=-1) / jnp.maximum(count, 1)
    return jnp.where(count > 0, 1.0 / mean_inv, jnp.nan), pw


def tle_from_neighbours(t, v2, keep, epsilon=TLE_EPSILON):
    """(global [C], pointwise [C, N]) from neighbour distances t [C, N, k] and the
    squared distances v2 [C, N, k, k] between those neighbours.

    scikit-dimension's measurements s_ij, t_ij with, for float32: differences
    of squares as (a - b)(a + b) of exact distance differences, the root
    rationalised where it would cancel, one division per measurement, and
    log(s / r) + log(t / r) as one log of the product of the two ratios.
    Neighbours are distinct points, so their distances are positive and the
    zero-distance boundary cases of scikit-dimension (u_i = 0, u_j = 0) cannot
    occur; v_ij = 0 (Gram rounding of two very close neighbours) is dropped as
    it drops it.
    """
    k = t.shape[-1]
    r = t[..., -1][..., None, None]
    di = t[..., :, None]
    dj = t[..., None, :]
    gap = (r - di) * (r + di)
    sq_diff = (di - dj) * (di + dj)
    at_r = di == r
    r_gap = (r - dj) * (r + dj)

    def measure(w2):
        b = w2 + sq_diff
        root = jnp.sqrt(jnp.maximum(b * b + 4.0 * w2 * gap, 0.0))
        pos = b > 0
        num = jnp.where(at_r, w2, jnp.where(pos, 2.0 * w2, root - b))
        den = jnp.where(at_r, w2 + r_gap, jnp.where(pos, root + b, 2.0 * gap))
        return num / den  # s / r

    s = measure(v2)
    tt = measure(2.0 * di * di + 2.0 * dj * dj - v2)
    off = ~jnp.eye(k, dtype=bool)
    v0 = (v2 == 0) & off
    floor = epsilon / r
    small = ((tt < floor) | (s < floor)) & off & ~v0
    use = off & ~v0 & ~small
    log_st = jnp.where(use, jnp.log(jnp.where(use, s * tt, 1.0)), 0.0)
    n_small = jnp.sum(small, axis=(-2, -1))
    n_v0 = jnp.sum(v0, axis=(-2, -1))
    tiny = t < epsilon
    n_tiny = jnp.sum(tiny, axis=-1)
    # scikit-dimension 0.5 drops the whole distance row once any distance is < epsilon.
    s2 = jnp.where(n_tiny > 0, 0.0, jnp.sum(jnp.log(t / t[..., -1:]), axis=-1))
    total = jnp.sum(log_st, axis=(-2, -1)) + 2.0 * s2
    pw = -2.0 * (k * k - n_small - n_tiny - n_v0) / total
    pw = jnp.where(keep, pw, jnp.nan)
    count = jnp.sum(keep, axis=-1)
    glob = jnp.sum(jnp.where(keep, pw, 0.0), axis=-1) / jnp.maximum(count, 1)
    return jnp.where(count > 0, glob, jnp.nan), pw


def _distances(ctx, k):
    sq, idx = ctx.knn_unique(k)
    keep = ctx.unique
    return jnp.sqrt(jnp.where(keep[..., None], sq, 1.0)), idx, keep


def _mle(ctx):
    t, _, keep = _distances(ctx, ctx.options["id_k"])
    return mle_from_distances(t, keep)


def _tle(ctx):
    t, idx, keep = _distances(ctx, ctx.options["id_k"])
    return tle_from_neighbours(t, ctx.neighbour_sq_distances(idx), keep)


def _mle_fields(ctx):
    glob, pw = _mle(ctx)
    return {"mle_id": glob, "local_id": pw}


def _tle_fields(ctx):
    glob, _ = _tle(ctx)
    return {"tle_id": glob}


def _check_id_k(k, name="id_k"):
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise ArgumentError("{" + name + "} must be an integer >= 2, got {value!r}", name, value=k)


ID_K = Option(
    "id_k",
    int,
    20,
    "Distinct neighbours of the MLE and TLE intrinsic dimension (scikit-dimension's n_neighbors).",
    check=_check_id_k,
)


def check_k(options, n, name="id_k"):
    k = options["id_k"]
    _check_id_k(k, name)
    validation.check_neighbours_fit(n, k, name)


def check_distinct(x, mask, k, name="k"):
    """Raise if a cloud of concrete x [..., N, D] has fewer than k + 1 distinct valid points."""
    if not validation.is_concrete(x, mask):
        return
    keep = np.asarray(duplicates.unique_mask(x, mask))
    counts = keep.sum(-1)
    if counts.size and counts.min() < k + 1:
        pos = np.unravel_index(int(np.argmin(counts)), counts.shape)
        raise ValueError(
            f"{name}={k} needs >= {k + 1} distinct valid points, but cloud "
            f"{tuple(int(p) for p in pos)} has {int(counts[pos])}"
        )


def _prepare(x, mask, k, selection):
    k = ID_K.default if k is None else k
    x = validation.as_points(x, "x")
    check_k({"id_k": k}, x.shape[-2], "id_k")
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask, max_k=k)
    check_distinct(x, mask, k, "id_k")
    valid = jnp.ones(x.shape[:-1], bool) if mask is None else mask
    return x, valid, {"id_k": int(k), "selection": selection}


@renamed_keywords(k="id_k")
def mle_id(x, mask=None, *, id_k=ID_K.default, selection=SELECTION.default):
    """Levina-Bickel MLE of each cloud x [..., N, D] -> (global [...], pointwise [..., N]).

    Reference: Levina & Bickel 2005, NeurIPS, eq. 8; MacKay & Ghahramani's
    averaging of inverses; scikit-dimension 0.5 ``MLE``.
    """
    x, valid, opts = _prepare(x, mask, id_k, selection)
    return backends.on_points(_mle, x, valid, opts, knn_k=opts["id_k"])


@renamed_keywords(k="id_k")
def tle_id(x, mask=None, *, id_k=ID_K.default, selection=SELECTION.default):
    """Tight-locality estimator of each cloud x [..., N, D] -> (global [...], pointwise [..., N]).

    Reference: Amsaleg et al. 2019 (SDM), scikit-dimension 0.5 ``TLE``.
    """
    x, valid, opts = _prepare(x, mask, id_k, selection)
    return backends.on_points(_tle, x, valid, opts, knn_k=opts["id_k"])


def _min_points(options):
    k = options["id_k"]
    return (k + 1, k + 1, f"id_k={k}")


ESTIMATORS = ReportSection(
    "Intrinsic dimension estimators",
    figure=sections.plot_estimators,
    text=sections.estimators_text,
    file="id_estimators.png",
    kinds=(PER_PROMPT, POOLED),
)

MLE = Observable(
    name="mle_id",
    compute=_mle_fields,
    fields=(
        Field("mle_id", (), "Levina-Bickel MLE intrinsic dimension (k = id_k)."),
        Field(
            "local_id",
            ("token",),
            "per-token MLE local ID (NaN at padding / duplicates).",
            tokens=True,
        ),
    ),
    consumes=("points", "unique", "knn_unique"),
    doc=__doc__,
    reference="Levina & Bickel 2005 (NeurIPS), eq. 8; scikit-dimension 0.5 MLE",
    reduce="inverse of the mean inverse over distinct tokens",
    options=(ID_K,),
    knn_unique_k=lambda o: o["id_k"],
    check=check_k,
    min_points=_min_points,
    pooled=True,
    report=(
        ESTIMATORS,
        ReportSection(
            "Token local ID and surprisal",
            figure=sections.plot_surprisal,
            text=sections.surprisal_text,
            needs=("local_id", "token_nll"),
            file="local_id_nll.png",
        ),
    ),
)

TLE = Observable(
    name="tle_id",
    compute=_tle_fields,
    fields=(Field("tle_id", (), "tight-locality (TLE) intrinsic dimension (k = id_k)."),),
    consumes=("points", "unique", "knn_unique"),
    doc=__doc__,
    reference="Amsaleg et al. 2019 (SDM); scikit-dimension 0.5 TLE",
    reduce="mean over distinct tokens",
    options=(ID_K,),
    knn_unique_k=lambda o: o["id_k"],
    check=check_k,
    min_points=_min_points,
    pooled=True,
    report=(ESTIMATORS,),
)
