"""Entropy, free energy and expected energy of the (logit or tuned) lens.

For the logits z of a position (V entries) and p = softmax(z), following the
follow-up of Cheng et al. ("The Intrinsic Dimension of Prompts in Internal
Representations of Large Language Models", arXiv 2405.15471, revised):

  entropy           H = -sum_v p_v log p_v
  free energy       F = -log sum_v exp(z_v - max z)
  expected energy   E = sum_v p_v (max z - z_v)

so that H = E - F. The lens logits of hidden state h_l are
z_l = W_U norm_final(T_l(h_l)) for l < L (T_l the identity for the logit lens,
nostalgebraist 2020; an affine translator for the tuned lens, Belrose et al.
2023, arXiv 2303.08112) and the model's own logits for l = L.

The statistics are accumulated over vocabulary pieces inside sequence chunks
(the mechanism of the model's token NLL), so no [L+1, T, V] array, and no
[T, V] one for long prompts, is ever alive: per piece j with maximum m_j,
s_j = sum exp(z - m_j) and u_j = sum exp(z - m_j) (m_j - z) >= 0, combined
with M = max_j m_j as S = sum_j e^(m_j - M) s_j, F = -log S,
E = sum_j e^(m_j - M) ((M - m_j) s_j + u_j) / S.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from geom_jax.models import decoder


@struct.dataclass
class LensUncertainty:
    """Lens statistics per prompt (leading axis B).

    Attributes:
      entropy, free_energy, energy: [B, L+1] means over valid positions of
        H, F and E at hidden state l = 0 (embedding output) .. L (the model's
        own logits).
      token_entropy: [B, T] the model's predictive entropy at each position
        (NaN at padding).
    """

    entropy: jax.Array
    free_energy: jax.Array
    energy: jax.Array
    token_entropy: jax.Array


def logit_uncertainty(h, vocab_rows, *, softcap=None):
    """H, F, E [B, T, 3] (float32) of the logits cap(h W^T) of normalised states.

    Args:
      h: [B, T, D] states already through the final norm.
      vocab_rows: W_U [V, D].
      softcap: c of z -> c tanh(z / c), or None.

    Returns:
      [B, T, 3]: entropy, free energy, expected energy (nats).
    """
    V = vocab_rows.shape[0]
    w = vocab_rows.astype(h.dtype)

    def one(hc):
        ms, ss, us = [], [], []
        for wj in decoder.vocab_pieces(w):
            z = jnp.einsum("btd,vd->btv", hc, wj, preferred_element_type=jnp.float32)
            if softcap is not None:
                z = softcap * jnp.tanh(z / softcap)
            m = jnp.max(z, axis=-1)
            gap = m[..., None] - z
            e = jnp.exp(-gap)
            ms.append(m)
            ss.append(jnp.sum(e, axis=-1))
            us.append(jnp.sum(e * gap, axis=-1))
        m, s, u = (jnp.stack(a, axis=-1) for a in (ms, ss, us))
        top = jnp.max(m, axis=-1, keepdims=True)
        scale = jnp.exp(m - top)
        total = jnp.sum(scale * s, axis=-1)
        free = -jnp.log(total)
        energy = jnp.sum(scale * ((top - m) * s + u), axis=-1) / total
        return jnp.stack([energy - free, free, energy], axis=-1)

    return decoder.map_sequence_chunks(one, h, vocab_size=V)


def translate(h, translator):
    """An affine tuned-lens translator h W + b (None: the identity, the logit lens)."""
    if translator is None:
        return h
    weight, bias = translator
    y = jnp.einsum("btd,de->bte", h, weight.astype(h.dtype), preferred_element_type=jnp.float32)
    return (y + bias.astype(jnp.float32)).astype(h.dtype)


def lens_stats(hidden, readout, translators=None):
    """Per-position H, F, E [L+1, B, T, 3] of every hidden state's lens logits.

    Args:
      hidden: [L+1, B, T, D] hidden states in Hugging Face's layout (the last
        entry already through the final norm, as the decoder returns them).
      readout: the model's :class:`~geom_jax.lens.unembedding.Readout`.
      translators: None (logit lens) or (weight [L, D, D], bias [L, D]) of a
        tuned lens, applied to h_0 .. h_{L-1}.

    Returns:
      [L+1, B, T, 3] float32, layers one at a time under lax.map.
    """
    stats = lambda x: logit_uncertainty(x, readout.vocab_rows, softcap=readout.softcap)

    def layer(args):
        h, tr = args
        return stats(readout.normalize(translate(h, tr)))

    inner = jax.lax.map(layer, (hidden[:-1], translators))
    return jnp.concatenate([inner, stats(hidden[-1])[None]], axis=0)


def lens_uncertainty(hidden, readout, mask=None, *, translators=None) -> LensUncertainty:
    """Lens entropy, free energy and energy per layer, and the model's entropy per token.

    Args:
      hidden: [L+1, B, T, D] hidden states (see :func:`lens_stats`).
      readout: the model's :class:`~geom_jax.lens.unembedding.Readout`.
      mask: bool [B, T] valid positions (None: all valid).
      translators: None (logit lens) or a tuned lens's (weight, bias).

    Returns:
      LensUncertainty with [B, L+1] means over valid positions (NaN for a
      prompt without any) and token_entropy [B, T].
    """
    per = lens_stats(hidden, readout, translators)
    valid = jnp.ones(per.shape[1:3], bool) if mask is None else jnp.asarray(mask, bool)
    count = jnp.sum(valid, axis=-1).astype(jnp.float32)
    sums = jnp.sum(jnp.where(valid[None, ..., None], per, 0.0), axis=2)  # [L+1, B, 3]
    means = jnp.where(
        count[None, :, None] > 0, sums / jnp.maximum(count, 1.0)[None, :, None], jnp.nan
    )
    means = jnp.moveaxis(means, 0, 1)  # [B, L+1, 3]
    return LensUncertainty(
        entropy=means[..., 0],
        free_energy=means[..., 1],
        energy=means[..., 2],
        token_entropy=jnp.where(valid, per[-1, ..., 0], jnp.nan),
    )
