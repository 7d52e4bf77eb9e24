"""Intrinsic dimension of the point cloud of a prompt's final logits, without
the logits.

The logits of position i are z_i = W_U h_i (h_i after the final norm), so
|z_i - z_j|^2 = (h_i - h_j)^T M (h_i - h_j) with M = W_U^T W_U [D, D]: the
logits' Gram matrix is H M H^T. With R the triangular factor of a QR
decomposition of W_U (R^T R = M, computed once per model and better
conditioned than forming M), the points y_i = R h_i [D] have exactly the
logits' pairwise distances, and GRIDE (Denti et al. 2022, arXiv 2104.13832)
and TwoNN (Facco et al. 2017, arXiv 1803.06992) run on them through the
usual Gram-matrix neighbour selection and exact refinement. No [N, V] array
is formed. The follow-up of Cheng et al. (arXiv 2405.15471, revised) uses
GRIDE with range 64 on the final logits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from geom_jax.metrics import validation
from geom_jax.metrics.measures import intrinsic_dimension
from geom_jax.metrics.neighbours import distances, duplicates, host_selection

DEFAULT_RANGE_MAX = 64


@struct.dataclass
class LogitID:
    """gride_ids, gride_errs, gride_scales [..., S'] and twonn [...] of the logits' cloud."""

    gride_ids: jax.Array
    gride_errs: jax.Array
    gride_scales: jax.Array
    twonn: jax.Array


@jax.jit
def _factor(vocab_rows):
    return jnp.linalg.qr(vocab_rows.astype(jnp.float32), mode="r").T


def logit_factor(vocab_rows, *, softcap=None):
    """F [D, r] (r = min(V, D)) with |h_i F - h_j F| = |W_U h_i - W_U h_j|.

    F = R^T for R of W_U = Q R, so F F^T = W_U^T W_U = M; computed once per
    model in float32.

    Args:
      vocab_rows: the unembedding W_U [V, D].
      softcap: the model's final-logit soft-cap; logits that pass through
        tanh are not linear in h, so a soft-capped model is refused.

    Returns:
      [D, r] float32.
    """
    if softcap is not None:
        raise ValueError(
            f"logit_factor: softcap={softcap}: soft-capped logits are not a linear map of the "
            "hidden state, so their distances cannot come from W_U^T W_U"
        )
    if vocab_rows.ndim != 2:
        raise ValueError(f"vocab_rows must be [V, D], got shape {tuple(vocab_rows.shape)}")
    return _factor(vocab_rows)


def cloud_id(x, y, valid, *, n_scales, discard_fraction, method) -> LogitID:
    """GRIDE and TwoNN of the points y [..., N, r] (the logits' isometric image
    of the final hidden states x [..., N, D]); duplicates are found on x
    (identical h <=> identical logits for a full-rank W_U), first kept."""
    valid = distances.valid_or_all(y, valid)
    keep = duplicates.first_occurrence(x, valid)
    gram, _ = distances.centred_gram(y, keep)
    ranks = intrinsic_dimension.gride_ranks(n_scales)
    r = intrinsic_dimension.unique_neighbour_distances(y, gram, keep, ranks, method)
    ids, errs, scales = intrinsic_dimension.gride_from_neighbours(r, keep)
    tw = intrinsic_dimension.twonn_from_neighbours(r[..., 0], r[..., 1], keep, discard_fraction)
    return LogitID(gride_ids=ids, gride_errs=errs, gride_scales=scales, twonn=tw)


def logit_points(x, factor):
    """y = x F [..., N, r] in float32 at HIGHEST precision: |y_i - y_j| = |z_i - z_j|."""
    return jnp.einsum("...nd,dr->...nr", x.astype(jnp.float32), factor, precision=distances.HIGHEST)


@functools.partial(jax.jit, static_argnames=("n_scales", "discard_fraction", "method"))
def _logit_id(x, mask, factor, n_scales, discard_fraction, method):
    return cloud_id(
        x,
        logit_points(x, factor),
        mask,
        n_scales=n_scales,
        discard_fraction=discard_fraction,
        method=method,
    )


def logit_id(
    x,
    mask=None,
    *,
    factor,
    range_max=DEFAULT_RANGE_MAX,
    discard_fraction=0.1,
    selection="auto",
    validate=True,
):
    """GRIDE and TwoNN of the final logits of each prompt, from its final hidden states.

    Args:
      x: [..., N, D] hidden states after the final norm (the decoder's last
        hidden state).
      mask: bool [..., N] valid positions (None: all valid); duplicates are
        dropped keeping the first occurrence, as for every ID estimator.
      factor: [D, r] from :func:`logit_factor` of the model's W_U.
      range_max: largest GRIDE neighbour rank n2 (the follow-up's 64).
      discard_fraction: TwoNN's discarded fraction of the largest ratios.
      selection: neighbour selection backend ("auto", "host", "xla").
      validate: check finiteness and valid counts first (concrete inputs).

    Returns:
      LogitID with gride_* [..., S'], S' = floor(log2(min(N, range_max))),
      and twonn [...].
    """
    host_selection.check_method(selection)
    validation.check_discard_fraction(discard_fraction)
    x = validation.as_points(x, "x")
    validation.check_range_max(x.shape[-2], range_max)
    if factor.shape[0] != x.shape[-1]:
        raise ValueError(
            f"factor has {factor.shape[0]} rows but the hidden states have D = {x.shape[-1]}"
        )
    mask = validation.as_mask(mask, x.shape[:-2], x.shape[-2])
    if validate:
        validation.validate_points(x, mask)
    return _logit_id(
        x,
        mask,
        jnp.asarray(factor, jnp.float32),
        validation.n_scales(x.shape[-2], range_max),
        float(discard_fraction),
        selection,
    )
