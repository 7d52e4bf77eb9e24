"""Information imbalance between two representations of the same tokens.

Delta(A -> B) = 2 / N^2 sum_i rank_B(i, nn_A(i)): the rank (from 1, self
excluded) in B's distance order around token i of i's nearest neighbour in
A (k = 1); near 0 when A's neighbourhoods predict B's, near 1 when they
carry no information about them (Glielmo et al. 2022, PNAS Nexus 1(2)
pgac039, eq. 1; DADApy ``return_inf_imb_two_selected_coords`` with full
ranks). All valid tokens take part; N is their number. Ranks are counted
on the keys |x_j|^2 - 2 x_i . x_j of the centred points (ties to the lower
index; ctx.query_ranks, metrics/ranks.py), nearest neighbours come from the
exact lists. In layer_geometry each layer's rank source (its Gram matrix on
the dense path, its points on the row-blocked one) is carried to the next
layer, so both directions of every consecutive pair need no Gram matrix
beyond the shared ones (plus the last layer's, twice).
"""

import jax.numpy as jnp

from geom_jax.metrics import distances, registry, validation
from geom_jax.metrics.ranks import STEP, ranks_from_gram  # noqa: F401  (re-exported)


def ranks_of(x, valid, queries):
    """rank_x(i, queries[i, q]) [C, N, Q] for clouds x [C, N, D]."""
    return ranks_from_gram(distances.centred_gram(x, valid)[0], valid, queries)


def imbalance_from_ranks(ranks, valid):
    """2 / N^2 sum_i ranks[i] over valid i ([C, N] -> [C])."""
    count = jnp.sum(valid, axis=-1).astype(jnp.float32)
    total = jnp.sum(jnp.where(valid, ranks, 0), axis=-1).astype(jnp.float32)
    return jnp.where(count > 1, 2.0 * total / jnp.maximum(count * count, 1.0), jnp.nan)


def _nn1(ctx):
    return ctx.knn_idx[..., 0]


def _standalone(ctx):
    """Delta(y -> x) for the first C clouds, Delta(x -> y) for the last C, ctx.x
    holding x and y concatenated on the cloud axis: [2C, N, D]."""
    c = ctx.x.shape[0] // 2
    nn = _nn1(ctx)
    swapped = jnp.concatenate([nn[c:], nn[:c]], axis=0)
    r = ranks_of(ctx.x, ctx.valid, swapped[..., None])[..., 0]
    return imbalance_from_ranks(r, ctx.valid)


def information_imbalance(x, y, mask=None, *, selection="auto"):
    """(Delta(x -> y), Delta(y -> x)) [..., 2] for clouds x [..., N, D], y [..., N, D'].

    Reference: Glielmo et al. 2022, PNAS Nexus, eq. 1 (k = 1).
    """
    x = validation.as_points(x, "x")
    y = validation.as_points(y, "y")
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(
            f"x and y must hold the same points: shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    validation.check_max_k(x.shape[-2], 1, name="N")
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask, "x")
    validation.validate_points(y, mask, "y")
    if x.shape[-1] != y.shape[-1]:
        d = max(x.shape[-1], y.shape[-1])
        pad = lambda a: jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, d - a.shape[-1])])
        x, y = pad(x), pad(y)
    batch = x.shape[:-2]
    valid = jnp.ones(x.shape[:-1], bool) if mask is None else mask
    xy = jnp.concatenate([x.reshape((-1,) + x.shape[-2:]), y.reshape((-1,) + y.shape[-2:])])
    v = jnp.broadcast_to(valid, x.shape[:-1]).reshape((-1, x.shape[-2]))
    delta = registry.on_points(
        _standalone, xy, jnp.concatenate([v, v]), {"selection": selection}, knn_k=1
    )
    c = delta.shape[0] // 2
    return jnp.stack([delta[c:], delta[:c]], axis=-1).reshape(batch + (2,))


def _prepare(stack):
    """The last layer's nearest neighbours [B, N], needed by every layer's Delta(last -> l)."""
    x, valid = stack.hidden[:, -1], stack.valid
    _, idx = stack.exact_knn(x, valid, 1)
    return {"nn_last": idx[..., 0]}


def _previous(ctx):
    return {"source": ctx.rank_source(), "nn1": ctx.knn_idx[..., 0]}


def _compute(ctx):
    """Per layer l, from its cloud and the previous layer's (carried: its Gram matrix
    on the dense path, its points on the row-blocked one): Delta(l-1 -> l),
    Delta(l -> l-1), Delta(last -> l); and nn1 for the end."""
    valid, prev, nn = ctx.valid, ctx.previous, ctx.knn_idx[..., 0]
    here = ctx.query_ranks(jnp.stack([prev["nn1"], ctx.prepared["nn_last"]], axis=-1))
    back = ctx.query_ranks(nn[..., None], prev["source"])[..., 0]
    return {
        "from_prev": imbalance_from_ranks(here[..., 0], valid),
        "to_prev": imbalance_from_ranks(back, valid),
        "from_last": imbalance_from_ranks(here[..., 1], valid),
        "nn1": nn,
    }


def _combine(carry, stack):
    """Fields from the per-layer values [L, B]; Delta(l -> last) from the last layer's
    cloud with every layer's nearest neighbours as queries."""
    valid = stack.valid
    to_last = stack.query_ranks(stack.hidden[:, -1], valid, jnp.moveaxis(carry["nn1"], 0, -1))
    to_last = imbalance_from_ranks(jnp.moveaxis(to_last, -1, 0), valid)  # [L, B]
    return {
        "info_imbalance_next": jnp.stack([carry["from_prev"][1:], carry["to_prev"][1:]], axis=-1),
        "info_imbalance_last": jnp.stack([to_last, carry["from_last"]], axis=-1),
    }


OBSERVABLE = registry.Observable(
    name="info_imbalance",
    scope="pair",
    compute=_compute,
    combine=_combine,
    prepare=_prepare,
    previous=_previous,
    fields=(
        registry.Field(
            "info_imbalance_next",
            ("2",),
            "(Delta(l -> l+1), Delta(l+1 -> l)) information imbalance of consecutive layers.",
            "L-1",
        ),
        registry.Field(
            "info_imbalance_last",
            ("2",),
            "(Delta(l -> L), Delta(L -> l)) information imbalance of layer l and the last layer.",
        ),
    ),
    consumes=("points", "knn", "next_layer", "stack"),
    doc=__doc__,
    reference="Glielmo et al. 2022, PNAS Nexus 1(2) pgac039, eq. 1; DADApy",
    reduce="2 / N^2 sum over valid tokens of the rank",
    knn_k=lambda o: 1,
)
