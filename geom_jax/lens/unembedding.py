"""The decoder's read-out (final norm, unembedding, final-logit soft-cap) as one
small accessor, so the lens code does not depend on the decoder's attribute
names: a renamed or restructured decoder changes :func:`readout` only."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from geom_jax.models import layers


@dataclasses.dataclass(frozen=True)
class Readout:
    """What turns a hidden state into next-token logits.

    Attributes:
      config: the model's DecoderConfig (norm kind and epsilon).
      norm_scale, norm_bias: the final norm's weight [D] (None where the family
        has no final norm) and bias [D] or None.
      vocab_rows: the unembedding W_U [V, D] (lm_head / embed_out, or the
        embedding when tied).
      softcap: c of the final-logit soft-cap z -> c tanh(z / c), or None.
      dtype: the decoder's activation dtype.
    """

    config: Any
    norm_scale: jax.Array | None
    norm_bias: jax.Array | None
    vocab_rows: jax.Array
    softcap: float | None
    dtype: Any

    def normalize(self, h):
        """The final norm applied to hidden states h [..., D]."""
        if self.norm_scale is None:
            return h.astype(self.dtype)
        return layers.norm(self.config, h.astype(self.dtype), self.norm_scale, self.norm_bias)

    def cap(self, z):
        """The family's final-logit soft-capping (identity where it has none)."""
        if self.softcap is None:
            return z
        c = jnp.float32(self.softcap)
        return c * jnp.tanh(z / c)

    def logits(self, normed):
        """Logits [..., V] of already normalised states (float32); small inputs only."""
        z = jnp.einsum(
            "...d,vd->...v",
            normed,
            self.vocab_rows.astype(normed.dtype),
            preferred_element_type=jnp.float32,
        )
        return self.cap(z)


def readout(model) -> Readout:
    """The read-out of a :class:`geom_jax.models.Decoder` (concrete or traced)."""
    scale, bias = model.final_norm_scale, model.final_norm_bias
    rows = model.embed if model.lm_head is None else model.lm_head
    return Readout(
        config=model.config,
        norm_scale=None if scale is None else scale[...],
        norm_bias=None if bias is None else bias[...],
        vocab_rows=rows[...],
        softcap=model.config.final_softcap,
        dtype=model.dtype,
    )
