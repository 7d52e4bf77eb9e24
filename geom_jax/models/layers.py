"""Functional building blocks of the decoder: norms, rotary embeddings,
attention and MLPs. They take plain arrays so they run unchanged inside the
layer scan, under jit and under a sharding constraint.

Layouts: activations [B, T, D]; q [B, T, H, hd]; k, v [B, T, KV, hd].
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .config import DecoderConfig

MASK_VALUE = -1e30  # finite, so fully masked (padding) rows stay NaN-free


def rms_norm(x, scale, eps, axes=(-1,)):
    """RMSNorm (Zhang & Sennrich 2019) as HF Llama computes it: normalise in
    float32 over `axes`, cast back, then multiply by the weight."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=axes, keepdims=True) + eps)
    return y.astype(x.dtype) * scale.astype(x.dtype)


def rms_norm_one_plus(x, scale, eps, axes=(-1,)):
    """Gemma's RMSNorm: x / rms(x) * (1 + w), all in float32, then cast back."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=axes, keepdims=True) + eps)
    return (y * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


def layer_norm(x, scale, bias, eps):
    """LayerNorm with bias (Ba et al. 2016), statistics in float32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    xc = x32 - mean
    var = jnp.mean(xc * xc, axis=-1, keepdims=True)
    y = xc * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def norm(cfg: DecoderConfig, x, scale, bias=None, axes=(-1,)):
    """The config's norm over `axes` (LayerNorm only over the last)."""
    if cfg.norm == "rms":
        return rms_norm(x, scale, cfg.norm_eps, axes)
    if cfg.norm == "rms_one_plus":
        return rms_norm_one_plus(x, scale, cfg.norm_eps, axes)
    return layer_norm(x, scale, bias, cfg.norm_eps)


def softcap(x, cap: float | None):
    """cap * tanh(x / cap) (Gemma 2's logit soft-capping), or x when cap is None."""
    if cap is None:
        return x
    return jnp.tanh(x / cap) * cap


def activation(name: str, x):
    """HF ACT2FN semantics: 'gelu' is the exact erf form, 'gelu_new' /
    'gelu_pytorch_tanh' / 'gelu_fast' the tanh approximation."""
    if name == "silu":
        return jax.nn.silu(x)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "relu":
        return jax.nn.relu(x)
    return jax.nn.gelu(x, approximate=True)


def rope_inv_freq(cfg: DecoderConfig, local: bool = False) -> np.ndarray:
    """Inverse frequencies theta^(-2i/d) over the rotated dims (Su et al. 2021),
    in float32 as HF computes them, with 'linear' or Llama-3.1 'llama3'
    scaling (low frequencies divided by `factor`, a smooth ramp between).
    `local`: the sliding-window layers' base `rope_local_theta`, unscaled."""
    dim = cfg.rotary_dim
    theta = cfg.rope_local_theta if local else cfg.rope_theta
    inv = np.float32(1.0) / (
        np.float32(theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    )
    inv = inv.astype(np.float32)
    s = None if local else cfg.rope_scaling
    if s is None:
        return inv
    if s.rope_type == "linear":
        return (inv / np.float32(s.factor)).astype(np.float32)
    old = s.original_max_position_embeddings
    low_wavelen = old / s.low_freq_factor
    high_wavelen = old / s.high_freq_factor
    wavelen = (2 * math.pi / inv).astype(np.float32)
    scaled = np.where(wavelen > low_wavelen, inv / np.float32(s.factor), inv).astype(np.float32)
    smooth = (
        (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    ).astype(np.float32)
    smoothed = ((1 - smooth) * scaled / np.float32(s.factor) + smooth * scaled).astype(np.float32)
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(cfg: DecoderConfig, seq_len: int, local: bool = False):
    """cos, sin of shape [T, rotary_dim / 2] for positions 0..T-1 (float32)."""
    inv = jnp.asarray(rope_inv_freq(cfg, local))
    angles = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv[None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin, rotary_dim: int):
    """Rotates the first `rotary_dim` features of each head, pairing feature i
    with i + rotary_dim/2 (HF's rotate_half / GPT-NeoX convention).

    x: [B, T, ..., hd]; cos, sin: [T, rotary_dim / 2].
    """
    if rotary_dim == 0:
        return x
    half = rotary_dim // 2
    extra = x.ndim - 3
    c = cos.reshape(cos.shape[:1] + (1,) * extra + cos.shape[1:]).astype(x.dtype)
    s = sin.reshape(sin.shape[:1] + (1,) * extra + sin.shape[1:]).astype(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
    parts = [x1 * c - x2 * s, x2 * c + x1 * s]
    if rest.shape[-1]:
        parts.append(rest)
    return jnp.concatenate(parts, axis=-1)


def attention_bias(attention_mask, seq_len: int, sliding_window: int | None):
    """Additive float32 bias [B, T, T]: 0 where query i may attend key j
    (j <= i, i - window < j, key j valid), MASK_VALUE elsewhere."""
    i = jnp.arange(seq_len)[:, None]
    j = jnp.arange(seq_len)[None, :]
    allowed = j <= i
    if sliding_window is not None:
        allowed = allowed & (j > i - sliding_window)
    allowed = allowed[None] & (attention_mask[:, None, :] > 0)
    return jnp.where(allowed, 0.0, MASK_VALUE).astype(jnp.float32)


def query_blocks(seq_len: int, block: int, sliding_window: int | None):
    """Static (q_start, q_stop, k_start) triples: each query block attends
    only the keys that the causal (and sliding-window) mask can reach, so
    fully masked key blocks are never computed."""
    out = []
    for start in range(0, seq_len, block):
        stop = min(seq_len, start + block)
        k_start = 0 if sliding_window is None else max(0, start - sliding_window + 1)
        out.append((start, stop, k_start))
    return out


def attention(q, k, v, bias_blocks, blocks, num_kv_heads: int, logit_cap: float | None = None):
    """Softmax attention with grouped-query heads, one query block at a time.

    q [B, T, H, hd] (already scaled by hd^-1/2), k, v [B, T, KV, hd];
    bias_blocks[i] is block i's additive bias [B, q, k]. The G = H / KV query
    heads of a KV head are folded into the matmul rows ([B, KV, G*q, hd] x
    [B, KV, k, hd]), so K and V are never repeated and each dot is one large
    batched GEMM; scores and softmax are float32 and the normalisation is
    applied after the PV product (a [q, hd] division instead of [q, k]).
    `logit_cap` soft-caps the scores before the mask (Gemma 2).
    Returns [B, T, H, hd].
    """
    B, T, H, hd = q.shape
    KV = num_kv_heads
    G = H // KV
    qg = q.reshape(B, T, KV, G, hd).transpose(0, 2, 3, 1, 4)
    kh = k.transpose(0, 2, 1, 3)
    vh = v.transpose(0, 2, 1, 3)
    outs = []
    for (qs, qe, ks), bias in zip(blocks, bias_blocks):
        n, m = qe - qs, qe - ks
        qb = qg[:, :, :, qs:qe].reshape(B, KV, G * n, hd)
        s = jnp.einsum("bkmd,bksd->bkms", qb, kh[:, :, ks:qe], preferred_element_type=jnp.float32)
        s = softcap(s, logit_cap).reshape(B, KV, G, n, m) + bias[:, None, None]
        p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
        denom = jnp.sum(p, axis=-1, keepdims=True)
        o = jnp.einsum(
            "bkms,bksd->bkmd",
            p.reshape(B, KV, G * n, m).astype(v.dtype),
            vh[:, :, ks:qe],
            preferred_element_type=jnp.float32,
        )
        outs.append((o.reshape(B, KV, G, n, hd) / denom).astype(q.dtype))
    o = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return o.transpose(0, 3, 1, 2, 4).reshape(B, T, H, hd)
