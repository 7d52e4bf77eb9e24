"""The NNX decoder shared by the Llama, Mistral and GPT-NeoX families.

Per-layer weights are stacked along a leading 'layers' axis and the layers
run under `jax.lax.scan`, so compile time does not grow with depth; the scan
emits each layer's input, which gives Hugging Face's `hidden_states` tuple in
one pass.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from . import axes as ax
from .config import DecoderConfig
from .layers import (
    activation,
    apply_rope,
    attention,
    attention_bias,
    norm,
    query_blocks,
    rope_tables,
)

DEFAULT_ATTN_BLOCK = 128
NLL_CHUNK_ELEMENTS = 1 << 26  # logits elements per NLL chunk (256 MiB float32)
NLL_VOCAB_PIECES = 8  # most vocabulary pieces per chunk (see token_nll)


@struct.dataclass
class DecoderOutput:
    """`hidden_states` [L+1, B, T, D]: HF's tuple stacked (embedding output
    first, last entry after the final norm); `token_nll` [B, T-1]: -log p of
    token t+1 given tokens <= t, 0 where padding; `loss`: mean over valid
    targets (HF's `labels=input_ids` loss); `logits` [B, T, V] or None."""

    hidden_states: jax.Array
    token_nll: jax.Array
    loss: jax.Array
    logits: jax.Array | None = None


def _param(rngs: nnx.Rngs | None, shape, names, dtype, kind: str, std: float = 0.02):
    if kind == "ones":
        value = jnp.ones(shape, dtype)
    elif kind == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


class Blocks(nnx.Module):
    """All layers' weights, each stacked along a leading 'layers' axis.

    Attention: wq [L, D, H, hd], wk/wv [L, D, KV, hd], wo [L, H, hd, D];
    MLP: w_gate/w_up [L, D, F], w_down [L, F, D]; optional biases.
    """

    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs, param_dtype):
        L, D, H, KV, hd, F = (
            cfg.num_layers,
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.intermediate_size,
        )
        P = functools.partial(_param, rngs, dtype=param_dtype)
        layer_norm = cfg.norm == "layer"
        self.attn_norm_scale = P((L, D), (ax.LAYERS, ax.EMBED), kind="ones")
        self.attn_norm_bias = P((L, D), (ax.LAYERS, ax.EMBED), kind="zeros") if layer_norm else None
        self.wq = P((L, D, H, hd), (ax.LAYERS, ax.EMBED, ax.Q_HEADS, ax.HEAD_DIM), kind="normal")
        self.wk = P((L, D, KV, hd), (ax.LAYERS, ax.EMBED, ax.KV_HEADS, ax.HEAD_DIM), kind="normal")
        self.wv = P((L, D, KV, hd), (ax.LAYERS, ax.EMBED, ax.KV_HEADS, ax.HEAD_DIM), kind="normal")
        qkv_bias = cfg.qkv_bias
        self.bq = (
            P((L, H, hd), (ax.LAYERS, ax.Q_HEADS, ax.HEAD_DIM), kind="zeros") if qkv_bias else None
        )
        self.bk = (
            P((L, KV, hd), (ax.LAYERS, ax.KV_HEADS, ax.HEAD_DIM), kind="zeros")
            if qkv_bias
            else None
        )
        self.bv = (
            P((L, KV, hd), (ax.LAYERS, ax.KV_HEADS, ax.HEAD_DIM), kind="zeros")
            if qkv_bias
            else None
        )
        self.wo = P((L, H, hd, D), (ax.LAYERS, ax.Q_HEADS, ax.HEAD_DIM, ax.EMBED), kind="normal")
        self.bo = P((L, D), (ax.LAYERS, ax.EMBED), kind="zeros") if cfg.out_bias else None
        self.mlp_norm_scale = P((L, D), (ax.LAYERS, ax.EMBED), kind="ones")
        self.mlp_norm_bias = P((L, D), (ax.LAYERS, ax.EMBED), kind="zeros") if layer_norm else None
        gated = cfg.mlp == "gated"
        self.w_gate = P((L, D, F), (ax.LAYERS, ax.EMBED, ax.MLP), kind="normal") if gated else None
        self.w_up = P((L, D, F), (ax.LAYERS, ax.EMBED, ax.MLP), kind="normal")
        self.w_down = P((L, F, D), (ax.LAYERS, ax.MLP, ax.EMBED), kind="normal")
        bias = cfg.mlp_bias
        self.b_gate = P((L, F), (ax.LAYERS, ax.MLP), kind="zeros") if bias and gated else None
        self.b_up = P((L, F), (ax.LAYERS, ax.MLP), kind="zeros") if bias else None
        self.b_down = P((L, D), (ax.LAYERS, ax.EMBED), kind="zeros") if bias else None


def _dense(x, w, b, spec, dtype):
    y = jnp.einsum(spec, x, w.astype(dtype))
    return y if b is None else y + b.astype(dtype)


def _self_attention(cfg: DecoderConfig, p, h, cos, sin, bias_blocks, blocks, dtype):
    B, T, _ = h.shape
    q = _dense(h, p["wq"], p.get("bq"), "btd,dhk->bthk", dtype)
    k = _dense(h, p["wk"], p.get("bk"), "btd,dhk->bthk", dtype)
    v = _dense(h, p["wv"], p.get("bv"), "btd,dhk->bthk", dtype)
    q = apply_rope(q, cos, sin, cfg.rotary_dim) * jnp.asarray(cfg.head_dim**-0.5, dtype)
    k = apply_rope(k, cos, sin, cfg.rotary_dim)
    o = attention(q, k, v, bias_blocks, blocks, cfg.num_kv_heads)
    return _dense(o, p["wo"], p.get("bo"), "bthk,hkd->btd", dtype)


def _mlp(cfg: DecoderConfig, p, h, dtype):
    up = _dense(h, p["w_up"], p.get("b_up"), "btd,df->btf", dtype)
    if cfg.mlp == "gated":
        gate = _dense(h, p["w_gate"], p.get("b_gate"), "btd,df->btf", dtype)
        up = activation(cfg.activation, gate) * up
    else:
        up = activation(cfg.activation, up)
    return _dense(up, p["w_down"], p.get("b_down"), "btf,fd->btd", dtype)


def layer_forward(cfg: DecoderConfig, p, x, cos, sin, bias_blocks, blocks, dtype):
    """One pre-norm decoder layer; `p` maps Blocks field names to one layer's
    arrays. GPT-NeoX's parallel residual is x + attn(ln1 x) + mlp(ln2 x)."""
    h = norm(cfg, x, p["attn_norm_scale"], p.get("attn_norm_bias"))
    a = _self_attention(cfg, p, h, cos, sin, bias_blocks, blocks, dtype)
    if cfg.parallel_residual:
        m = _mlp(cfg, p, norm(cfg, x, p["mlp_norm_scale"], p.get("mlp_norm_bias")), dtype)
        return m + a + x
    x = a + x
    return _mlp(cfg, p, norm(cfg, x, p["mlp_norm_scale"], p.get("mlp_norm_bias")), dtype) + x


def _vocab_pieces(vocab_size: int) -> int:
    """The largest count <= NLL_VOCAB_PIECES that divides the vocabulary."""
    return next(k for k in range(NLL_VOCAB_PIECES, 0, -1) if vocab_size % k == 0)


def vocab_pieces(w):
    """The unembedding rows w [V, D] cut into `_vocab_pieces(V)` interleaved
    pieces (rows j, j+k, j+2k, ...: a vocab-sharded W stays evenly sharded).

    Call it inside the body of `map_sequence_chunks`, so that the pieces
    (together one copy of W) need not stay alive across sequence chunks."""
    V, D = w.shape
    k = _vocab_pieces(V)
    return [w] if k == 1 else [w.reshape(V // k, k, D)[:, j] for j in range(k)]


def map_sequence_chunks(fn, h, *extra, vocab_size: int):
    """fn over sequence chunks of h [B, n, D] (and of each extra [B, n, ...]),
    each chunk short enough that its [B, c, V] logits hold at most
    NLL_CHUNK_ELEMENTS elements; fn(hc, *extra_c) returns a pytree of
    [B, c, ...] arrays, reassembled here to [B, n, ...]."""
    B, n, _ = h.shape
    chunk = max(1, min(n, NLL_CHUNK_ELEMENTS // max(1, B * vocab_size)))
    pad = (-n) % chunk
    args = (h,) + extra
    if pad:
        args = tuple(jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2)) for a in args)
    nc = (n + pad) // chunk
    if nc == 1:
        out = fn(*args)
    else:
        split = lambda a: jnp.moveaxis(a.reshape((B, nc, chunk) + a.shape[2:]), 1, 0)
        join = lambda o: jnp.moveaxis(o, 0, 1).reshape((B, nc * chunk) + o.shape[3:])
        out = jax.tree.map(join, jax.lax.map(lambda a: fn(*a), tuple(map(split, args))))
    return jax.tree.map(lambda o: o[:, :n], out)


def token_nll(h, vocab_rows, input_ids, attention_mask):
    """Next-token NLL [B, T-1] as logsumexp(logits) - target logit, in float32,
    over sequence chunks so the [B, T, V] logits are never all alive. The
    target logit is h . W[target] (a row gather, not a [B, T, V] gather).

    Within a chunk the vocabulary is cut into `vocab_pieces`, each its own
    matmul + logsumexp, combined by a logsumexp over pieces.
    XLA:CPU runs the logsumexp reduction on one thread; as separate pieces it
    overlaps the next piece's matmul and reads cache-sized logits
    (SmolLM2, T=1024: 0.44 -> 0.31 s; BUILD_NOTES section 4)."""
    V = vocab_rows.shape[0]
    w = vocab_rows.astype(h.dtype)

    def one(hc, tc):
        pieces = vocab_pieces(w)
        lse = [
            jax.nn.logsumexp(
                jnp.einsum("btd,vd->btv", hc, wj, preferred_element_type=jnp.float32), axis=-1
            )
            for wj in pieces
        ]
        lse = lse[0] if len(pieces) == 1 else jax.nn.logsumexp(jnp.stack(lse, axis=-1), axis=-1)
        tgt = jnp.einsum(
            "btd,btd->bt", hc.astype(jnp.float32), jnp.take(w, tc, axis=0).astype(jnp.float32)
        )
        return lse - tgt

    nll = map_sequence_chunks(one, h[:, :-1], input_ids[:, 1:], vocab_size=V)
    valid = (attention_mask[:, 1:] > 0) & (attention_mask[:, :-1] > 0)
    return jnp.where(valid, nll, 0.0), valid


class Decoder(nnx.Module):
    """Decoder-only transformer (Llama / Mistral / GPT-NeoX by configuration).

    `model(input_ids, attention_mask=None, *, return_logits=False)` runs the
    jitted `forward` and returns a DecoderOutput. Activations are computed in
    `dtype`, parameters stored in `param_dtype` (e.g. bfloat16 weights,
    float32 activations). `attn_block` is the query block length of the
    block-causal attention.
    """

    def __init__(
        self,
        config: DecoderConfig,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        attn_block: int = DEFAULT_ATTN_BLOCK,
    ):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.param_dtype = jnp.dtype(param_dtype)
        self.attn_block = int(attn_block)
        D, V = config.hidden_size, config.vocab_size
        P = functools.partial(_param, rngs, dtype=param_dtype)
        self.embed = P((V, D), (ax.VOCAB, ax.EMBED), kind="normal")
        self.blocks = Blocks(config, rngs, param_dtype)
        self.final_norm_scale = P((D,), (ax.EMBED,), kind="ones")
        self.final_norm_bias = (
            P((D,), (ax.EMBED,), kind="zeros") if config.norm == "layer" else None
        )
        self.lm_head = (
            None if config.tie_word_embeddings else P((V, D), (ax.VOCAB, ax.EMBED), kind="normal")
        )

    def __call__(
        self, input_ids, attention_mask=None, *, return_logits: bool = False
    ) -> DecoderOutput:
        graphdef, state = nnx.split(self)
        return forward(graphdef, state, input_ids, attention_mask, return_logits=return_logits)

    def apply(
        self, input_ids, attention_mask=None, *, return_logits: bool = False
    ) -> DecoderOutput:
        """The forward without its own jit, for use inside a caller's jit."""
        cfg, dtype = self.config, self.dtype
        input_ids = jnp.asarray(input_ids, jnp.int32)
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((B, T), jnp.int32)
        attention_mask = jnp.asarray(attention_mask)
        embed = self.embed[...]
        x = jnp.take(embed, input_ids, axis=0).astype(dtype)
        cos, sin = rope_tables(cfg, T)
        blocks = query_blocks(T, self.attn_block, cfg.sliding_window)
        bias = attention_bias(attention_mask, T, cfg.sliding_window)
        bias_blocks = [bias[:, qs:qe, ks:qe] for qs, qe, ks in blocks]
        stacked = {
            k: v
            for k, v in nnx.to_pure_dict(nnx.state(self.blocks, nnx.Param)).items()
            if v is not None
        }

        def body(h, p):
            return layer_forward(cfg, p, h, cos, sin, bias_blocks, blocks, dtype), h

        last, inputs = jax.lax.scan(body, x, stacked)
        final = norm(
            cfg,
            last,
            self.final_norm_scale[...],
            None if self.final_norm_bias is None else self.final_norm_bias[...],
        )
        hidden_states = jnp.concatenate([inputs, final[None]], axis=0)
        vocab_rows = embed if self.lm_head is None else self.lm_head[...]
        logits = None
        if return_logits:
            logits = jnp.einsum(
                "btd,vd->btv", final, vocab_rows.astype(dtype), preferred_element_type=jnp.float32
            )
        nll, valid = token_nll(final, vocab_rows, input_ids, attention_mask)
        loss = jnp.sum(nll) / jnp.maximum(jnp.sum(valid), 1)
        return DecoderOutput(hidden_states=hidden_states, token_nll=nll, loss=loss, logits=logits)


@functools.partial(jax.jit, static_argnames=("graphdef", "return_logits"))
def forward(
    graphdef, state, input_ids, attention_mask=None, *, return_logits: bool = False
) -> DecoderOutput:
    """Functional, jitted forward: `graphdef, state = nnx.split(model)`, then
    `forward(graphdef, state, input_ids, attention_mask)`; callable inside
    another jit (e.g. together with the metric kernels)."""
    return nnx.merge(graphdef, state).apply(input_ids, attention_mask, return_logits=return_logits)


def abstract_decoder(
    config: DecoderConfig,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    attn_block: int = DEFAULT_ATTN_BLOCK,
) -> Decoder:
    """A Decoder whose parameters are ShapeDtypeStructs (no memory), to be
    filled by a loader or by `init_random`."""
    return nnx.eval_shape(
        lambda: Decoder(
            config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype, attn_block=attn_block
        )
    )


def init_random(
    config: DecoderConfig,
    *,
    seed: int = 0,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    attn_block: int = DEFAULT_ATTN_BLOCK,
) -> Decoder:
    """A Decoder with N(0, 0.02) weights generated on device inside jit, so
    an 8B-parameter bfloat16 model never exists in host float32."""
    make = lambda: Decoder(
        config, rngs=nnx.Rngs(seed), dtype=dtype, param_dtype=param_dtype, attn_block=attn_block
    )
    graphdef, _ = nnx.split(
        abstract_decoder(config, dtype=dtype, param_dtype=param_dtype, attn_block=attn_block)
    )
    state = jax.jit(lambda: nnx.split(make())[1])()
    return nnx.merge(graphdef, state)


def with_params(
    config: DecoderConfig,
    params: dict[str, Any],
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    attn_block: int = DEFAULT_ATTN_BLOCK,
) -> Decoder:
    """A Decoder holding `params`, a nested dict shaped like
    `nnx.to_pure_dict(nnx.state(model))` (arrays already in param_dtype)."""
    model = abstract_decoder(config, dtype=dtype, param_dtype=param_dtype, attn_block=attn_block)
    graphdef, state = nnx.split(model)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)
