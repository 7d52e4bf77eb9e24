"""Intrinsic dimension: TwoNN (Facco et al. 2017) and GRIDE (Denti et al. 2022).

Both work on neighbour distances of the unique valid points of each cloud
(duplicates dropped keeping the first occurrence, as the paper's code does),
with DADApy 0.3.4's conventions, vectorised over clouds and scales.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from geom_jax.errors import ArgumentError
from geom_jax.metrics import validation
from geom_jax.metrics.declare.observable import (
    POOLED,
    Field,
    Observable,
    Option,
    ReportSection,
)
from geom_jax.metrics.declare.options import MAX_K, SELECTION
from geom_jax.metrics.measures import local_id
from geom_jax.metrics.measures.sections import intrinsic_dimension as sections
from geom_jax.metrics.neighbours import (
    distances,
    duplicates,
    host_selection,
    manual_axes,
    refinement,
)
from geom_jax.metrics.neighbours.selection import select_neighbours

BISECTION_LO = 1e-3
BISECTION_HI = 1e3
BISECTION_STEPS = 34
"""DADApy bisects until |d1 - d0| <= 1e-7: 34 halvings of [0.001, 1000]."""
LIKELIHOOD_FLOOR = 2e-7
OUTLIER_FACTOR = 20.0


def gride_ranks(n_scales):
    """Neighbour ranks 1, 2, 4, ..., 2**n_scales used by GRIDE (and TwoNN)."""
    return tuple(2**s for s in range(n_scales + 1))


def kth_smallest(values, valid, k):
    """k-th smallest (0-based) valid entry of non-negative values [..., M].

    Exact bisection on the float32 bit pattern (monotone for x >= 0):
    32 counting passes instead of a sort.
    """
    bits = lax.bitcast_convert_type(jnp.where(valid, values, jnp.inf), jnp.int32)
    lo = manual_axes.like(jnp.zeros(k.shape, jnp.int32), bits)
    hi = manual_axes.like(jnp.full(k.shape, 0x7F800000, jnp.int32), bits)

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits <= mid[..., None], axis=-1) >= k + 1
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lo, _ = lax.fori_loop(0, 32, body, (lo, hi))
    return lax.bitcast_convert_type(lo, jnp.float32)


def quantile(values, valid, q):
    """np.quantile(values[valid], q) with linear interpolation, for x >= 0; q a
    float or a tuple of floats (then stacked on a new leading axis, all found by
    the same bisection passes)."""
    qs = (q,) if np.ndim(q) == 0 else tuple(q)
    count = jnp.sum(valid, axis=-1)
    pos = jnp.stack([qq * (count - 1).astype(jnp.float32) for qq in qs])
    below = jnp.floor(pos).astype(jnp.int32)
    frac = pos - below.astype(jnp.float32)
    above = jnp.minimum(below + 1, jnp.maximum(count - 1, 0))
    both = kth_smallest(values, valid, jnp.concatenate([below, above]))
    a, b = both[: len(qs)], both[len(qs) :]
    out = jnp.where(frac >= 0.5, b - (b - a) * (1.0 - frac), a + (b - a) * frac)
    return out[0] if np.ndim(q) == 0 else out


def _neg_score(dim, log_mu, kept, n1, n2, n_kept):
    """Minus d/dd of the GRIDE log-likelihood (DADApy's N - 1 convention)."""
    one_minus = jnp.maximum(-jnp.expm1(-dim[..., None] * log_mu), LIKELIHOOD_FLOOR)
    terms = ((1.0 - n2 + n1)[..., None] / one_minus + (n2 - 1.0)[..., None]) * log_mu
    return jnp.sum(jnp.where(kept, terms, 0.0), axis=-1) - (n_kept - 1.0) / dim


def gride_from_ratios(mu, valid, n1):
    """GRIDE maximum likelihood and error per scale.

    mu [..., S, M] ratios r_{2 n1} / r_{n1} >= 1, valid [..., S, M], n1 [S].
    Ratios >= median + 20 (q95 - median) are dropped from the likelihood
    (DADApy's filter); the maximum is found by 34 bisection steps on
    [0.001, 1000] on the sign of the score; the error is 1 / sqrt(Fisher
    information) over all valid ratios (Denti et al. 2022, eq. for I(d)).
    """
    n1 = jnp.asarray(n1, jnp.float32)
    n2 = 2.0 * n1
    log_mu = jnp.log(jnp.maximum(mu, 1.0))
    median, q95 = quantile(mu, valid, (0.5, 0.95))
    cut = median + OUTLIER_FACTOR * (q95 - median)
    kept = valid & (mu < cut[..., None])
    n_kept = jnp.sum(kept, axis=-1).astype(jnp.float32)

    lo = manual_axes.like(jnp.full(n_kept.shape, BISECTION_LO, jnp.float32), log_mu)
    hi = manual_axes.like(jnp.full(n_kept.shape, BISECTION_HI, jnp.float32), log_mu)
    s_hi = _neg_score(hi, log_mu, kept, n1, n2, n_kept)

    def step(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        same = _neg_score(mid, log_mu, kept, n1, n2, n_kept) * s_hi > 0
        return jnp.where(same, lo, mid), jnp.where(same, mid, hi)

    lo, hi = lax.fori_loop(0, BISECTION_STEPS, step, (lo, hi))
    dim = 0.5 * (lo + hi)

    z = dim[..., None] * log_mu
    p = jnp.exp(-z)
    one_minus = -jnp.expm1(-z)
    positive = log_mu > 0
    ratio = jnp.where(positive, log_mu / jnp.where(positive, one_minus, 1.0), 1.0 / dim[..., None])
    count = jnp.sum(valid, axis=-1).astype(jnp.float32)
    fisher = count / dim**2 + (n2 - n1 - 1.0) * jnp.sum(
        jnp.where(valid, ratio**2 * p, 0.0), axis=-1
    )
    return dim, 1.0 / jnp.sqrt(fisher)


def gride_from_neighbours(r, keep):
    """GRIDE ids, errs, scales [..., S] from r [..., N, S+1] sorted distances at ranks 2**s.

    keep [..., N] marks the unique valid points; scale s needs 2**(s+1) <=
    n_unique - 1, else NaN. scales = mean over points of (r_n1 + r_n2) / 2.
    """
    n_scales = r.shape[-1] - 1
    n_unique = jnp.sum(keep, axis=-1)
    n1 = 2 ** np.arange(n_scales)
    r1 = jnp.swapaxes(r[..., :-1], -1, -2)
    r2 = jnp.swapaxes(r[..., 1:], -1, -2)
    supported = 2 * n1 <= (n_unique[..., None] - 1)
    valid = keep[..., None, :] & supported[..., None]
    mu = jnp.where(valid, r2 / jnp.where(valid, r1, 1.0), 1.0)
    ids, errs = gride_from_ratios(mu, valid, n1)
    count = jnp.maximum(jnp.sum(valid, axis=-1), 1).astype(jnp.float32)
    scales = jnp.sum(jnp.where(valid, 0.5 * (r1 + r2), 0.0), axis=-1) / count
    nan = jnp.float32(jnp.nan)
    return (
        jnp.where(supported, ids, nan),
        jnp.where(supported, errs, nan),
        jnp.where(supported, scales, nan),
    )


def _fraction_table(n_max, keep_fraction):
    """floor(n * keep_fraction) for n = 0..n_max, computed in float64 as DADApy does."""
    return jnp.asarray([int(n * keep_fraction) for n in range(n_max + 1)], jnp.int32)


def twonn_from_neighbours(r1, r2, keep, discard_fraction):
    """TwoNN (Facco et al. 2017) from first/second neighbour distances [..., N].

    discard_fraction > 0: slope through the origin of -log(1 - i/N) against
    the sorted log(r2/r1), on the (1 - discard_fraction) N smallest ratios
    (DADApy compute_id_2NN, mu_fraction = 1 - discard_fraction).
    discard_fraction == 0: maximum likelihood (N - 1) / sum log(r2/r1).
    N = number of unique valid points; NaN when N < 3.
    """
    n = r1.shape[-1]
    n_unique = jnp.sum(keep, axis=-1)
    log_mu = jnp.where(keep, jnp.log(jnp.maximum(r2 / jnp.where(keep, r1, 1.0), 1.0)), 0.0)
    nf = n_unique.astype(jnp.float32)
    if discard_fraction == 0.0:
        dim = (nf - 1.0) / jnp.sum(log_mu, axis=-1)
    else:
        n_eff = _fraction_table(n, 1.0 - discard_fraction)[n_unique]
        x = jnp.sort(jnp.where(keep, log_mu, jnp.inf), axis=-1)
        i = jnp.arange(1, n + 1, dtype=jnp.float32)
        y = -jnp.log1p(-i / nf[..., None])
        use = jnp.arange(n) < n_eff[..., None]
        x = jnp.where(use, x, 0.0)
        y = jnp.where(use, y, 0.0)
        dim = jnp.sum(x * y, axis=-1) / jnp.sum(x * x, axis=-1)
    return jnp.where(n_unique >= validation.MIN_VALID_POINTS, dim, jnp.nan)


def unique_neighbour_distances(x, gram, keep, ranks, method):
    """Distances [..., N, len(ranks)] at the given neighbour ranks among unique points.

    Indices come from the Gram matrix; the selected pairs are refined by
    direct differences and sorted per point.
    """
    _, ranked = select_neighbours(gram, keep, keep, k_near=0, ranks=ranks, method=method)
    exact = refinement.refine_candidates(x, ranked, keep)
    exact, _ = refinement.sort_candidates(exact, ranked, len(ranks))
    return jnp.sqrt(exact)


def _prepare(x, mask):
    valid = distances.valid_or_all(x, mask)
    keep = duplicates.first_occurrence(x, valid)
    gram, _ = distances.centred_gram(x, keep)
    return keep, gram


@functools.partial(jax.jit, static_argnames=("n_scales", "method"))
def _gride(x, mask, n_scales, method):
    keep, gram = _prepare(x, mask)
    r = unique_neighbour_distances(x, gram, keep, gride_ranks(n_scales), method)
    return gride_from_neighbours(r, keep)


@functools.partial(jax.jit, static_argnames=("discard_fraction", "method"))
def _twonn(x, mask, discard_fraction, method):
    keep, gram = _prepare(x, mask)
    r = unique_neighbour_distances(x, gram, keep, (1, 2), method)
    return twonn_from_neighbours(r[..., 0], r[..., 1], keep, discard_fraction)


def gride(x, mask=None, *, range_max=None, selection=SELECTION.default):
    """GRIDE intrinsic dimension (Denti et al. 2022) of each cloud x [..., N, D].

    Scales n1 = 1, 2, 4, ..., 2**(S-1), n2 = 2 n1, S = floor(log2(min(N,
    range_max))); range_max None is min(256, N - 1), the largest the cloud
    supports. Returns (ids, errs, scales) [..., S] float32; NaN where the
    unique valid points cannot support a scale (n2 > n_unique - 1).
    """
    host_selection.check_method(selection)
    x = validation.as_points(x, "x")
    range_max = validation.resolve_range_max(x.shape[-2], range_max)
    validation.check_range_max(x.shape[-2], range_max)
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask)
    return _gride(x, mask, validation.n_scales(x.shape[-2], range_max), selection)


def twonn(x, mask=None, *, discard_fraction=None, selection=SELECTION.default):
    """TwoNN intrinsic dimension (Facco et al. 2017) of each cloud x [..., N, D] -> [...].

    discard_fraction=0.1: linear fit through the origin on the 90% smallest
    ratios (DADApy's default); 0.0: the maximum-likelihood form.
    """
    host_selection.check_method(selection)
    if discard_fraction is None:
        discard_fraction = TWONN_DISCARD_FRACTION.default
    validation.check_discard_fraction(discard_fraction)
    x = validation.as_points(x, "x")
    if x.shape[-2] < validation.MIN_VALID_POINTS:
        raise ValueError(
            f"x: TwoNN needs N >= {validation.MIN_VALID_POINTS} points per cloud, "
            f"got N = {x.shape[-2]}"
        )
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask)
    return _twonn(x, mask, float(discard_fraction), selection)


def _gride_observable(ctx):
    """GRIDE at every scale and TwoNN (linear fit and ML) from the shared neighbour data.

    Ranks r <= max_k are read from the exactly re-ranked neighbour lists when
    no cloud of the chunk has duplicates (the usual case after the embedding
    layer); otherwise, and for the larger ranks, the Gram-selected pairs among
    distinct points are refined separately.
    """
    o = ctx.options
    x, valid, keep = ctx.x, ctx.valid, ctx.unique
    ranks = gride_ranks(validation.n_scales(x.shape[-2], o["range_max"]))
    if ctx.ranks == ranks:
        ranked = ctx.ranked
    else:
        ranked = ctx.ranked[..., np.asarray([ctx.ranks.index(r) for r in ranks])]
    max_k = o["max_k"]
    low = [i for i, r in enumerate(ranks) if r <= max_k]
    high = [i for i, r in enumerate(ranks) if r > max_k]
    low_ranks = np.asarray([ranks[i] for i in low]) - 1
    if high:
        from_lists, high_sq = ctx.knn_sq_at(low_ranks, also=ranked[..., high])
        exact_high = jnp.where(refinement.allowed(keep, ranked[..., high]), high_sq, jnp.inf)
    else:  # range_max <= max_k: every rank comes from the lists
        from_lists = ctx.knn_sq_at(low_ranks)
    exact_low = lax.cond(
        jnp.all(keep == valid),
        lambda: from_lists,
        lambda: ctx.candidate_sq_distances(ranked[..., low], keep),
    )
    exact_ranked = jnp.concatenate([exact_low, exact_high], axis=-1) if high else exact_low
    exact_ranked, _ = refinement.sort_candidates(exact_ranked, ranked, len(ranks), "xla")
    r = jnp.sqrt(exact_ranked)
    ids, errs, scales = gride_from_neighbours(r, keep)
    discard = o["twonn_discard_fraction"]
    return {
        "gride_ids": ids,
        "gride_errs": errs,
        "gride_scales": scales,
        "twonn": twonn_from_neighbours(r[..., 0], r[..., 1], keep, discard),
        "twonn_ml": twonn_from_neighbours(r[..., 0], r[..., 1], keep, 0.0),
        "n_unique": jnp.sum(keep, axis=-1).astype(jnp.int32),
    }


def _check_range_max(v):
    if v < 2:
        raise ArgumentError("{range_max} must be an integer >= 2, got {v!r}", "range_max", v=v)


def _resolve_range_max(value, n, kind):
    """None: the largest range n points support, capped (256 for a prompt's tokens, 2**13
    for dataset-scale clouds); an explicit value a dataset-scale cloud of n points cannot
    reach is refused (a prompt's range is capped by its length, as the paper's)."""
    if value is None:
        cap = validation.MAX_DATASET_RANGE if kind == POOLED else validation.MAX_RANGE
        return validation.default_range_max(n, cap)
    if kind == POOLED and value > n - 1:
        raise ArgumentError(
            "{range_max}={value} needs clouds of >= {need} points, but the smallest has {n}",
            "range_max",
            value=value,
            need=value + 1,
            n=n,
        )
    return value


RANGE_MAX = Option(
    "range_max",
    int,
    None,
    "Largest GRIDE neighbour rank n2 (default: the largest the clouds support, up to "
    f"{validation.MAX_RANGE} for a prompt's tokens and {validation.MAX_DATASET_RANGE} for "
    "dataset-scale clouds; the value used is recorded).",
    check=_check_range_max,
    optional=True,
    resolve=lambda v, n, kind: _resolve_range_max(v, n, kind),
)

TWONN_DISCARD_FRACTION = Option(
    "twonn_discard_fraction",
    float,
    0.1,
    "Fraction of the largest TwoNN ratios left out of the linear fit (0: maximum likelihood).",
    check=lambda v: validation.check_discard_fraction(v, "twonn_discard_fraction"),
)


def _check_gride(options, n):
    validation.check_range_max(n, options["range_max"])
    validation.check_max_k(n, options["max_k"])


STATUS_FEW_DISTINCT = 2
STATUS_DUPLICATES = 4
STATUS_FLAGS = {
    STATUS_FEW_DISTINCT: "fewer distinct tokens than the largest GRIDE scale needs: NaN there",
    STATUS_DUPLICATES: "tokens merged as exact or near-duplicates for the ID estimators",
}


def _status(fields, mask):
    """Status bits [B, L] from the distinct-token counts (STATUS_FLAGS)."""
    n_unique = fields["n_unique"]
    largest_n2 = 2 ** fields["gride_ids"].shape[-1]
    flags = jnp.where(n_unique - 1 < largest_n2, STATUS_FEW_DISTINCT, 0)
    n_valid = jnp.sum(mask, axis=-1)[:, None]
    return flags | jnp.where(n_unique < n_valid, STATUS_DUPLICATES, 0)


OBSERVABLE = Observable(
    name="gride",
    compute=_gride_observable,
    fields=(
        Field(
            "gride_ids",
            ("scale",),
            "GRIDE intrinsic dimension of layer l (1..L) at scale n1 = 2**j.",
        ),
        Field("gride_errs", ("scale",), "its standard error, 1/sqrt(Fisher information)."),
        Field(
            "gride_scales",
            ("scale",),
            "mean distance (r_n1 + r_n2)/2 of the neighbours used.",
            length=True,
        ),
        Field("twonn", (), "TwoNN intrinsic dimension (90% linear fit), layers 1..L."),
        Field("twonn_ml", (), "TwoNN maximum likelihood (N - 1) / sum log mu.", saved=False),
        Field(
            "n_unique",
            (),
            "distinct valid tokens of the layer (near-duplicates merged, duplicate_tolerance), "
            "the N of the ID estimators; 0 where the layer is not finite.",
            dtype="int32",
        ),
    ),
    consumes=("points", "unique", "gram", "knn", "ranked"),
    doc=__doc__,
    reference=(
        "Denti et al. 2022 (GRIDE), Sci. Rep. 12:20005; "
        "Facco et al. 2017 (TwoNN), Sci. Rep. 7:12140"
    ),
    reduce="maximum likelihood over distinct tokens (first occurrence kept)",
    options=(RANGE_MAX, TWONN_DISCARD_FRACTION, MAX_K),
    knn_k=lambda o: o["max_k"],
    ranks=lambda o, n: gride_ranks(validation.n_scales(n, o["range_max"])),
    check=_check_gride,
    paper=True,
    pooled=True,
    status=_status,
    status_flags=STATUS_FLAGS,
    report=(
        ReportSection(
            "Intrinsic dimension across layers",
            figure=sections.plot_id_vs_layer,
            text=sections.headline_text,
            needs=("gride_ids", "loss"),
            file="id_vs_layer.png",
        ),
        ReportSection(
            "Intrinsic dimension against GRIDE scale",
            figure=sections.plot_id_vs_scale,
            needs=("gride_ids", "gride_scales"),
            file="id_vs_scale.png",
        ),
        ReportSection(
            "Intrinsic dimension and loss",
            figure=sections.plot_id_loss,
            needs=("gride_ids", "loss"),
            file="id_loss.png",
        ),
        local_id.ESTIMATORS,  # GRIDE and TwoNN are two estimators already
        ReportSection(
            "Intrinsic dimension of dataset-scale clouds",
            figure=sections.plot_clouds,
            text=sections.clouds_text,
            needs=("gride_ids",),
            file="clouds_id.png",
            kinds=(POOLED,),
        ),
    ),
)
