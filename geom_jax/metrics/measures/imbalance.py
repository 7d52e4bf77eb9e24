"""Information imbalance between two representations of the same tokens.

Delta(A -> B) = 2 / N^2 sum_i rank_B(i, nn_A(i)): the rank (from 1, self
excluded) in B's distance order around token i of i's nearest neighbour in
A (k = 1); near 0 when A's neighbourhoods predict B's, near 1 when they
carry no information about them (Glielmo et al. 2022, PNAS Nexus 1(2)
pgac039, eq. 1; DADApy ``return_inf_imb_two_selected_coords`` with full
ranks). All valid tokens take part; N is their number. Ranks are counted
on the keys |x_j|^2 - 2 x_i . x_j of the centred points (ties to the lower
index; ctx.query_ranks, metrics/neighbours/ranks.py), nearest neighbours come from the
exact lists. In layer_geometry each layer's rank source (its Gram matrix on
the dense path, its points on the row-blocked one) is carried to the next
layer, so both directions of every consecutive pair need no Gram matrix
beyond the shared ones (plus the last layer's, twice).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from geom_jax.metrics import validation
from geom_jax.metrics.declare.observable import PER_PROMPT, POOLED, Field, Observable, ReportSection
from geom_jax.metrics.declare.options import SELECTION
from geom_jax.metrics.measures.sections import imbalance as sections
from geom_jax.metrics.neighbours import distances, refinement
from geom_jax.metrics.neighbours.ranks import STEP, ranks_from_gram  # noqa: F401  (re-exported)


def ranks_of(x, valid, queries):
    """rank_x(i, queries[i, q]) [C, N, Q] for clouds x [C, N, D]."""
    return ranks_from_gram(distances.centred_gram(x, valid)[0], valid, queries)


def imbalance_from_ranks(ranks, valid):
    """2 / N^2 sum_i ranks[i] over valid i ([C, N] -> [C])."""
    count = jnp.sum(valid, axis=-1).astype(jnp.float32)
    total = jnp.sum(jnp.where(valid, ranks, 0), axis=-1).astype(jnp.float32)
    return jnp.where(count > 1, 2.0 * total / jnp.maximum(count * count, 1.0), jnp.nan)


def _nearest_and_gram(x, valid, selection):
    gram, _ = distances.centred_gram(x, valid)
    _, idx = refinement.exact_knn(x, gram, valid, 1, selection)
    return idx, gram


@functools.partial(jax.jit, static_argnames=("selection",))
def _imbalance_pair(x, y, valid, selection):
    """(Delta(x -> y), Delta(y -> x)) [C, 2] for clouds x [C, N, Dx], y [C, N, Dy]:
    each representation's own Gram matrix and nearest neighbours, no padding."""
    nn_x, gram_x = _nearest_and_gram(x, valid, selection)
    nn_y, gram_y = _nearest_and_gram(y, valid, selection)
    to_y = imbalance_from_ranks(ranks_from_gram(gram_y, valid, nn_x)[..., 0], valid)
    to_x = imbalance_from_ranks(ranks_from_gram(gram_x, valid, nn_y)[..., 0], valid)
    return jnp.stack([to_y, to_x], axis=-1)


def information_imbalance(x, y, mask=None, *, selection=SELECTION.default):
    """(Delta(x -> y), Delta(y -> x)) [..., 2] for clouds x [..., N, Dx], y [..., N, Dy].

    Dx and Dy may differ. Reference: Glielmo et al. 2022, PNAS Nexus, eq. 1
    (k = 1); DADApy ``return_inf_imb_two_selected_coords`` with full ranks.
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
    batch, n = x.shape[:-2], x.shape[-2]
    valid = jnp.ones(x.shape[:-1], bool) if mask is None else mask
    delta = _imbalance_pair(
        x.reshape((-1, n, x.shape[-1])),
        y.reshape((-1, n, y.shape[-1])),
        jnp.broadcast_to(valid, x.shape[:-1]).reshape((-1, n)),
        selection,
    )
    return delta.reshape(batch + (2,))


def _prepare(stack):
    """The last layer's nearest neighbours [B, N], needed by every layer's Delta(last -> l)."""
    x, valid = stack.hidden[-1], stack.valid
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
    to_last = stack.query_ranks(stack.hidden[-1], valid, jnp.moveaxis(carry["nn1"], 0, -1))
    to_last = imbalance_from_ranks(jnp.moveaxis(to_last, -1, 0), valid)  # [L, B]
    return {
        "info_imbalance_next": jnp.stack([carry["from_prev"][1:], carry["to_prev"][1:]], axis=-1),
        "info_imbalance_last": jnp.stack([to_last, carry["from_last"]], axis=-1),
    }


OBSERVABLE = Observable(
    name="info_imbalance",
    scope="pair",
    compute=_compute,
    combine=_combine,
    prepare=_prepare,
    previous=_previous,
    fields=(
        Field(
            "info_imbalance_next",
            ("direction",),
            "(Delta(l -> l+1), Delta(l+1 -> l)) information imbalance of consecutive layers.",
            "L-1",
        ),
        Field(
            "info_imbalance_last",
            ("direction",),
            "(Delta(l -> L), Delta(L -> l)) information imbalance of layer l and the last layer.",
        ),
    ),
    consumes=("points", "knn", "next_layer", "stack"),
    doc=__doc__,
    reference="Glielmo et al. 2022, PNAS Nexus 1(2) pgac039, eq. 1; DADApy",
    reduce="2 / N^2 sum over valid tokens of the rank",
    knn_k=lambda o: 1,
    pooled=True,
    report=(
        ReportSection(
            "Information imbalance",
            figure=sections.plot,
            text=sections.text,
            file="info_imbalance.png",
            kinds=(PER_PROMPT, POOLED),
        ),
    ),
)


QUERY_CHUNK = 4
"""Queries ranked at a time in imbalance_matrix (each an [N, N] pass)."""


@functools.partial(jax.jit, static_argnames=("selection",))
def _imbalance_matrix(a, b, valid, selection):
    def nearest(stack):
        return lax.map(
            lambda x: _nearest_and_gram(x[None], valid[None], selection)[0][0, :, 0], stack
        )

    def ranked_in(stack, queries):
        """Delta(q -> l) [L, Q]: ranks, in each layer l of stack, of the query layers'
        nearest neighbours queries [Q, N]."""
        q = queries.shape[0]
        pad = (-q) % QUERY_CHUNK
        chunks = jnp.concatenate([queries, jnp.repeat(queries[:1], pad, 0)]).reshape(
            -1, QUERY_CHUNK, queries.shape[1]
        )

        def layer(x):
            gram, _ = distances.centred_gram(x[None], valid[None])

            def chunk(c):
                r = ranks_from_gram(gram, valid[None], c.T[None])[0]  # [N, QUERY_CHUNK]
                return imbalance_from_ranks(r.T, valid[None])

            return lax.map(chunk, chunks).reshape(-1)[:q]

        return lax.map(layer, stack)

    nn_a, nn_b = nearest(a), nearest(b)
    a_to_b = ranked_in(b, nn_a).T  # [La, Lb]: a's neighbours ranked in b
    b_to_a = ranked_in(a, nn_b)  # [La, Lb]: b's neighbours ranked in a
    return jnp.stack([a_to_b, b_to_a], axis=-1)


def imbalance_matrix(stack_a, stack_b, mask=None, *, selection=SELECTION.default):
    """Information imbalance between every layer of two stacks of the same points.

    Each layer's nearest neighbours and centred Gram matrix are computed once; a
    layer's Gram matrix ranks the nearest neighbours of every layer of the other
    stack (QUERY_CHUNK at a time), so La + Lb Gram matrices serve the La x Lb pairs.

    Args:
      stack_a: [La, N, Da] the points in La representations.
      stack_b: [Lb, N, Db] the same points in Lb representations.
      mask: bool [N] valid points (None: all).
      selection: neighbour-selection backend ("auto", "host", "xla").

    Returns:
      [La, Lb, 2] float32: (Delta(a -> b), Delta(b -> a)) of layer a of stack_a and
      layer b of stack_b; entry [a, b] equals information_imbalance(stack_a[a],
      stack_b[b]).

    Reference: Glielmo et al. 2022, PNAS Nexus 1(2) pgac039, eq. 1 (k = 1); Cheng et
    al. 2025 (arXiv 2405.15471) compare layers across models with it.
    """
    a = validation.as_points(stack_a, "stack_a", min_rank=3)
    b = validation.as_points(stack_b, "stack_b", min_rank=3)
    if a.ndim != 3 or b.ndim != 3 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"stack_a and stack_b must be [L, N, D] stacks of the same N points, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    n = a.shape[1]
    validation.check_max_k(n, 1, name="N")
    mask = validation.as_mask(mask, (), n)
    valid = jnp.ones((n,), bool) if mask is None else mask
    return _imbalance_matrix(a, b, valid, selection)
