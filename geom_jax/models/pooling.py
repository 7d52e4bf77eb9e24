"""One point per row: the hidden states of a row pooled over its valid tokens.

Cheng et al. (ICLR 2025, arXiv 2405.15471, Sec. 3) represent a sequence by its
last token's hidden state; Valeriani et al. (NeurIPS 2023, "The geometry of
hidden representations of large transformer models", arXiv 2302.00294) by the
mean over its tokens. Both are taken here at every hidden state (embedding
output first, as :class:`geom_jax.models.DecoderOutput` stacks them) over the
tokens the mask marks valid, so right- or left-padded rows pool only their own
tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

POOLS = ("last", "mean")
"""Pooling choices: the last valid token, or the mean over valid tokens."""


def check_pool(how: str) -> None:
    """Raises ValueError unless ``how`` is one of :data:`POOLS`."""
    if how not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {how!r}")


def pool_hidden(hidden: jax.Array, attention_mask: jax.Array, how: str) -> jax.Array:
    """Pools hidden states over each row's valid tokens.

    Args:
      hidden: [L+1, B, T, D] hidden states (``DecoderOutput.hidden_states``).
      attention_mask: [B, T], nonzero on the tokens to pool (the attention mask,
        or a pooling mask, e.g. with a BOS position zeroed).
      how: 'last' (the hidden state at the last valid position of each row) or
        'mean' (sum over valid tokens in float32, divided exactly by their count).

    Returns:
      [B, L+1, D] float32; NaN for a row with no valid token.

    Raises:
      ValueError: ``how`` is not a pooling choice, or the shapes disagree.
    """
    check_pool(how)
    if hidden.ndim != 4 or attention_mask.shape != hidden.shape[1:3]:
        raise ValueError(
            f"pool_hidden: hidden must be [L+1, B, T, D] and attention_mask [B, T]; got "
            f"{tuple(hidden.shape)} and {tuple(attention_mask.shape)}"
        )
    valid = jnp.asarray(attention_mask) != 0
    count = jnp.sum(valid, axis=1)
    if how == "last":
        T = valid.shape[1]
        last = T - 1 - jnp.argmax(valid[:, ::-1], axis=1)
        picked = jnp.take_along_axis(hidden, last[None, :, None, None], axis=2)[:, :, 0]
        pooled = picked.astype(jnp.float32)
    else:
        weights = valid.astype(jnp.float32)[None, :, :, None]
        total = jnp.sum(hidden.astype(jnp.float32) * weights, axis=2)
        pooled = total / jnp.maximum(count, 1).astype(jnp.float32)[None, :, None]
    pooled = jnp.where((count > 0)[None, :, None], pooled, jnp.nan)
    return jnp.swapaxes(pooled, 0, 1)


def row_loss(token_nll: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Each row's mean next-token loss over its valid targets.

    Args:
      token_nll: [B, T-1] (``DecoderOutput.token_nll``: 0 where not valid).
      attention_mask: [B, T]; target t+1 counts when tokens t and t+1 are valid.

    Returns:
      [B] float32; NaN for a row with no valid target.
    """
    valid = (attention_mask[:, 1:] != 0) & (attention_mask[:, :-1] != 0)
    count = jnp.sum(valid, axis=1)
    total = jnp.sum(jnp.where(valid, token_nll.astype(jnp.float32), 0.0), axis=1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1).astype(jnp.float32), jnp.nan)
