"""Neighbourhood overlap chi_k between two representations of the same tokens.

chi_k = mean over points i of |N_k^x(i) ∩ N_k^y(i)| / k, with N_k the k
nearest neighbours (self excluded, ties to the lower index), as in the
paper's section on neighbourhood overlap (after Doimo et al. 2020).
"""

import functools

import jax
import jax.numpy as jnp

from geom_jax.metrics import validation
from geom_jax.metrics.declare.observable import PER_PROMPT, POOLED, Field, Observable, ReportSection
from geom_jax.metrics.declare.options import MAX_K, SELECTION
from geom_jax.metrics.measures.sections import overlap as sections
from geom_jax.metrics.neighbours import distances, host_selection, refinement


def overlap_from_lists(a, b, valid):
    """chi_k for k = 1..K from sorted neighbour lists a, b [..., N, K] -> [..., K].

    Entry a[p] is in both top-k lists iff k > max(p, q) where q is its
    position in b (K when absent); so the number of shared neighbours summed
    over valid points is, for every k, the count of those maxima below k: one
    histogram of the maxima (a scatter-add) and its cumulative sum. Only the
    K x K match table per point, no loop over points or k. Negative entries
    never match.
    """
    k = a.shape[-1]
    q = jnp.arange(k, dtype=jnp.int32)
    match = (a[..., :, None] == b[..., None, :]) & (a[..., :, None] >= 0)
    last = jnp.maximum(q, jnp.min(jnp.where(match, q, k), axis=-1))
    last = jnp.where(valid[..., None], last, k)
    lead = last.shape[:-2]
    flat = last.reshape((-1, last.shape[-2] * k))
    rows = jnp.arange(flat.shape[0])[:, None]
    hist = jnp.zeros((flat.shape[0], k + 1), jnp.int32).at[rows, flat].add(1)
    total = jnp.cumsum(hist[:, :k], axis=-1).reshape(lead + (k,))
    count = jnp.maximum(jnp.sum(valid, axis=-1), 1)
    norm = count[..., None].astype(jnp.float32) * jnp.arange(1, k + 1, dtype=jnp.float32)
    return total.astype(jnp.float32) / norm


def _knn_lists(x, valid, max_k, method):
    """Exact max_k-nearest-neighbour index lists [..., N, max_k] (internal)."""
    gram, _ = distances.centred_gram(x, valid)
    _, idx = refinement.exact_knn(x, gram, valid, max_k, method)
    return idx


@functools.partial(jax.jit, static_argnames=("max_k", "method"))
def _neighbourhood_overlap(x, y, valid, max_k, method):
    a = _knn_lists(x, valid, max_k, method)
    b = _knn_lists(y, valid, max_k, method)
    return overlap_from_lists(a, b, valid)


def neighbourhood_overlap(x, y, mask=None, *, max_k=MAX_K.default, selection=SELECTION.default):
    """Neighbourhood overlap chi_k between two representations of the same points.

    Args:
      x: [..., N, D] points in the first representation.
      y: [..., N, D'] the same points in the second.
      mask: bool [..., N]; only valid points take part (as points and as neighbours).
      max_k: largest neighbourhood size.
      selection: "auto", "host" or "xla" (identical results).

    Returns:
      [..., max_k] float32: out[..., k-1] = chi_k for k = 1..max_k.

    Reference: Doimo et al. 2020 (NeurIPS), the paper's section on neighbourhood overlap.
    """
    host_selection.check_method(selection)
    x = validation.as_points(x, "x")
    y = validation.as_points(y, "y")
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(
            f"x and y must hold the same points: shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    validation.check_max_k(x.shape[-2], max_k)
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    validation.validate_points(x, mask, "x", max_k=max_k)
    validation.validate_points(y, mask, "y", max_k=max_k)
    return _neighbourhood_overlap(x, y, distances.valid_or_all(x, mask), max_k, selection)


def _overlap_carry(ctx):
    return {"lists": ctx.knn_idx[..., : ctx.options["max_k"]]}


def _overlap_combine(carry, stack):
    lists = carry["lists"]
    return {"overlap": overlap_from_lists(lists[:-1], lists[1:], stack.valid)}


OBSERVABLE = Observable(
    name="overlap",
    scope="pair",
    compute=_overlap_carry,
    combine=_overlap_combine,
    fields=(
        Field(
            "overlap", ("k",), "chi_k between layers l and l+1 (l = 1..L-1), k = index + 1.", "L-1"
        ),
    ),
    consumes=("points", "knn", "next_layer"),
    doc=__doc__,
    reference="the paper's Sec. on neighbourhood overlap (after Doimo et al. 2020, NeurIPS)",
    reduce="mean over valid tokens of |N_k^l(i) ∩ N_k^{l+1}(i)| / k",
    options=(MAX_K,),
    knn_k=lambda o: o["max_k"],
    check=lambda o, n: validation.check_max_k(n, o["max_k"]),
    min_points=lambda o: (o["max_k"] + 1, 0, f"max_k={o['max_k']}"),
    paper=True,
    pooled=True,
    report=(
        ReportSection(
            "Neighbourhood overlap across layers",
            figure=sections.plot,
            needs=("overlap",),
            file="overlap_vs_layer.png",
            kinds=(PER_PROMPT, POOLED),
        ),
    ),
)
