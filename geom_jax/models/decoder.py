"""The NNX decoder shared by every model family (`families/`).

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
    softcap,
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
    MLP: w_gate/w_up [L, D, F], w_down [L, F, D]; optional biases, QK-norm
    scales ([L, hd] per head, or [L, H, hd] / [L, KV, hd] over the whole
    projection) and sublayer norms: `attn_norm` / `mlp_norm` before each
    sublayer ('pre'), `attn_post_norm` / `mlp_post_norm` on its output ('post').
    """

    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs, param_dtype, init_std: float = 0.02):
        L, D, H, KV, hd, F = (
            cfg.num_layers,
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.intermediate_size,
        )
        P = functools.partial(_param, rngs, dtype=param_dtype, std=init_std)
        layer_norm = cfg.norm == "layer"
        norm_init = "zeros" if cfg.norm == "rms_one_plus" else "ones"
        pre = cfg.sublayer_norms in ("pre", "pre_post")
        post = cfg.sublayer_norms in ("post", "pre_post")

        def norm_scale(on, shape=(L, D), names=(ax.LAYERS, ax.EMBED)):
            return P(shape, names, kind=norm_init) if on else None

        def norm_bias(on):
            return P((L, D), (ax.LAYERS, ax.EMBED), kind="zeros") if on and layer_norm else None

        self.attn_norm_scale = norm_scale(pre)
        self.attn_norm_bias = norm_bias(pre)
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
        if cfg.qk_norm == "head":
            self.q_norm_scale = norm_scale(True, (L, hd), (ax.LAYERS, ax.HEAD_DIM))
            self.k_norm_scale = norm_scale(True, (L, hd), (ax.LAYERS, ax.HEAD_DIM))
        elif cfg.qk_norm == "projection":
            self.q_norm_scale = norm_scale(True, (L, H, hd), (ax.LAYERS, ax.Q_HEADS, ax.HEAD_DIM))
            self.k_norm_scale = norm_scale(True, (L, KV, hd), (ax.LAYERS, ax.KV_HEADS, ax.HEAD_DIM))
        else:
            self.q_norm_scale = self.k_norm_scale = None
        self.wo = P((L, H, hd, D), (ax.LAYERS, ax.Q_HEADS, ax.HEAD_DIM, ax.EMBED), kind="normal")
        self.bo = P((L, D), (ax.LAYERS, ax.EMBED), kind="zeros") if cfg.out_bias else None
        self.attn_post_norm_scale = norm_scale(post)
        self.attn_post_norm_bias = norm_bias(post)
        self.mlp_norm_scale = norm_scale(pre)
        self.mlp_norm_bias = norm_bias(pre)
        gated = cfg.mlp == "gated"
        self.w_gate = P((L, D, F), (ax.LAYERS, ax.EMBED, ax.MLP), kind="normal") if gated else None
        self.w_up = P((L, D, F), (ax.LAYERS, ax.EMBED, ax.MLP), kind="normal")
        self.w_down = P((L, F, D), (ax.LAYERS, ax.MLP, ax.EMBED), kind="normal")
        bias = cfg.mlp_bias
        self.b_gate = P((L, F), (ax.LAYERS, ax.MLP), kind="zeros") if bias and gated else None
        self.b_up = P((L, F), (ax.LAYERS, ax.MLP), kind="zeros") if bias else None
        self.b_down = P((L, D), (ax.LAYERS, ax.EMBED), kind="zeros") if bias else None
        self.mlp_post_norm_scale = norm_scale(post)
        self.mlp_post_norm_bias = norm_bias(post)


def _dense(x, w, b, spec, dtype):
    y = jnp.einsum(spec, x, w.astype(dtype))
    return y if b is None else y + b.astype(dtype)


def _qk_norm(cfg: DecoderConfig, x, scale):
    """Per-head ([hd] scale) or whole-projection ([heads, hd] scale) RMSNorm."""
    if cfg.qk_norm == "none":
        return x
    axes = (-1,) if cfg.qk_norm == "head" else (-2, -1)
    return norm(cfg, x, scale, None, axes)


def _self_attention(cfg: DecoderConfig, p, h, cos, sin, bias_blocks, blocks, dtype):
    q = _dense(h, p["wq"], p.get("bq"), "btd,dhk->bthk", dtype)
    k = _dense(h, p["wk"], p.get("bk"), "btd,dhk->bthk", dtype)
    v = _dense(h, p["wv"], p.get("bv"), "btd,dhk->bthk", dtype)
    q = _qk_norm(cfg, q, p.get("q_norm_scale"))
    k = _qk_norm(cfg, k, p.get("k_norm_scale"))
    scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
    q = apply_rope(q, cos, sin, cfg.rotary_dim) * jnp.asarray(scale, dtype)
    k = apply_rope(k, cos, sin, cfg.rotary_dim)
    o = attention(q, k, v, bias_blocks, blocks, cfg.num_kv_heads, cfg.attn_softcap)
    return _dense(o, p["wo"], p.get("bo"), "bthk,hkd->btd", dtype)


def _mlp(cfg: DecoderConfig, p, h, dtype):
    up = _dense(h, p["w_up"], p.get("b_up"), "btd,df->btf", dtype)
    if cfg.mlp == "gated":
        gate = _dense(h, p["w_gate"], p.get("b_gate"), "btd,df->btf", dtype)
        up = activation(cfg.activation, gate) * up
    else:
        up = activation(cfg.activation, up)
    return _dense(up, p["w_down"], p.get("b_down"), "btf,fd->btd", dtype)


def _sublayer(cfg: DecoderConfig, p, name: str, x, fn):
    """fn(x) with the sublayer's pre-norm on its input and post-norm on its
    output, as `cfg.sublayer_norms` asks (without the residual)."""
    if p.get(f"{name}_norm_scale") is not None:
        x = norm(cfg, x, p[f"{name}_norm_scale"], p.get(f"{name}_norm_bias"))
    y = fn(x)
    if p.get(f"{name}_post_norm_scale") is not None:
        y = norm(cfg, y, p[f"{name}_post_norm_scale"], p.get(f"{name}_post_norm_bias"))
    return y


def layer_forward(cfg: DecoderConfig, p, x, cos, sin, bias_blocks, blocks, dtype):
    """One decoder layer; `p` maps Blocks field names to one layer's arrays.
    GPT-NeoX's parallel residual is x + attn(ln1 x) + mlp(ln2 x)."""
    attn = lambda h: _self_attention(cfg, p, h, cos, sin, bias_blocks, blocks, dtype)
    mlp = lambda h: _mlp(cfg, p, h, dtype)
    a = _sublayer(cfg, p, "attn", x, attn)
    if cfg.parallel_residual:
        return _sublayer(cfg, p, "mlp", x, mlp) + a + x
    x = a + x
    return _sublayer(cfg, p, "mlp", x, mlp) + x


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


def token_nll(h, vocab_rows, input_ids, attention_mask, logit_cap: float | None = None):
    """Next-token NLL [B, T-1] as logsumexp(logits) - target logit, in float32,
    over sequence chunks so the [B, T, V] logits are never all alive. The
    target logit is h . W[target] (a row gather, not a [B, T, V] gather).

    Within a chunk the vocabulary is cut into `vocab_pieces`, each its own
    matmul + logsumexp, combined by a logsumexp over pieces.
    XLA:CPU runs the logsumexp reduction on one thread; as separate pieces it
    overlaps the next piece's matmul and reads cache-sized logits
    (SmolLM2, T=1024: 0.44 -> 0.31 s; docs/history.md section 4). `logit_cap`
    soft-caps the logits first (Gemma 2's final_logit_softcapping)."""
    V = vocab_rows.shape[0]
    w = vocab_rows.astype(h.dtype)

    def one(hc, tc):
        pieces = vocab_pieces(w)
        lse = [
            jax.nn.logsumexp(
                softcap(
                    jnp.einsum("btd,vd->btv", hc, wj, preferred_element_type=jnp.float32),
                    logit_cap,
                ),
                axis=-1,
            )
            for wj in pieces
        ]
        lse = lse[0] if len(pieces) == 1 else jax.nn.logsumexp(jnp.stack(lse, axis=-1), axis=-1)
        tgt = jnp.einsum(
            "btd,btd->bt", hc.astype(jnp.float32), jnp.take(w, tc, axis=0).astype(jnp.float32)
        )
        return lse - softcap(tgt, logit_cap)

    nll = map_sequence_chunks(one, h[:, :-1], input_ids[:, 1:], vocab_size=V)
    valid = (attention_mask[:, 1:] > 0) & (attention_mask[:, :-1] > 0)
    return jnp.where(valid, nll, 0.0), valid


class Decoder(nnx.Module):
    """Decoder-only transformer; the family is a matter of configuration.

    `model(input_ids, attention_mask=None, *, return_logits=False)` runs the
    jitted `forward` and returns a DecoderOutput. Activations are computed in
    `dtype`, parameters stored in `param_dtype` (e.g. bfloat16 weights,
    float32 activations). `attn_block` is the query block length of the
    block-causal attention. `init_std` is the standard deviation of the
    normal initial weights (matrices and embeddings; norm scales start at their
    identity, biases at zero).
    """

    def __init__(
        self,
        config: DecoderConfig,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        attn_block: int = DEFAULT_ATTN_BLOCK,
        init_std: float = 0.02,
    ):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.param_dtype = jnp.dtype(param_dtype)
        self.attn_block = int(attn_block)
        D, V = config.hidden_size, config.vocab_size
        P = functools.partial(_param, rngs, dtype=param_dtype, std=init_std)
        self.embed = P((V, D), (ax.VOCAB, ax.EMBED), kind="normal")
        self.blocks = Blocks(config, rngs, param_dtype, init_std)
        norm_init = "zeros" if config.norm == "rms_one_plus" else "ones"
        self.final_norm_scale = P((D,), (ax.EMBED,), kind=norm_init) if config.final_norm else None
        self.final_norm_bias = (
            P((D,), (ax.EMBED,), kind="zeros")
            if config.final_norm and config.norm == "layer"
            else None
        )
        self.lm_head = (
            None if config.tie_word_embeddings else P((V, D), (ax.VOCAB, ax.EMBED), kind="normal")
        )
        self.pos_embed = (
            P(
                (config.max_position_embeddings + config.position_offset, D),
                (ax.POSITIONS, ax.EMBED),
                kind="normal",
            )
            if config.positions == "learned"
            else None
        )

    def final_hidden(self, x):
        """The final norm (when the family has one) applied to the last layer's
        output: what HF returns as the last hidden state and feeds to the head."""
        if self.final_norm_scale is None:
            return x
        bias = None if self.final_norm_bias is None else self.final_norm_bias[...]
        return norm(self.config, x, self.final_norm_scale[...], bias)

    def unembedding(self):
        """The [V, D] rows of the output projection (the tied embedding or lm_head)."""
        return self.embed[...] if self.lm_head is None else self.lm_head[...]

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
        if cfg.embed_scale:
            x = x * jnp.asarray(cfg.hidden_size**0.5, dtype)
        if self.pos_embed is not None:
            positions = jnp.arange(T) + cfg.position_offset
            x = x + jnp.take(self.pos_embed[...], positions, axis=0).astype(dtype)
        local = cfg.layer_is_local
        mixed = any(local) and not all(local)
        cos, sin = rope_tables(cfg, T)
        window = cfg.sliding_window if all(local) else None
        blocks = query_blocks(T, self.attn_block, window)
        bias = attention_bias(attention_mask, T, window)
        bias_blocks = [bias[:, qs:qe, ks:qe] for qs, qe, ks in blocks]
        stacked = {
            k: v
            for k, v in nnx.to_pure_dict(nnx.state(self.blocks, nnx.Param)).items()
            if v is not None
        }
        if mixed:
            local_bias = attention_bias(attention_mask, T, cfg.sliding_window)
            local_blocks = [local_bias[:, qs:qe, ks:qe] for qs, qe, ks in blocks]
            local_cos, local_sin = (
                rope_tables(cfg, T, local=True) if cfg.rope_local_theta else (cos, sin)
            )

            def body(h, xs):
                p, is_local = xs
                pick = lambda a, b: jnp.where(is_local, a, b)
                bb = [pick(lb, gb) for lb, gb in zip(local_blocks, bias_blocks)]
                c, s = pick(local_cos, cos), pick(local_sin, sin)
                return layer_forward(cfg, p, h, c, s, bb, blocks, dtype), h

            xs = (stacked, jnp.asarray(local))
        else:
            if any(local) and cfg.rope_local_theta:
                cos, sin = rope_tables(cfg, T, local=True)

            def body(h, p):
                return layer_forward(cfg, p, h, cos, sin, bias_blocks, blocks, dtype), h

            xs = stacked

        last, inputs = jax.lax.scan(body, x, xs)
        final = self.final_hidden(last)
        hidden_states = jnp.concatenate([inputs, final[None]], axis=0)
        vocab_rows = self.unembedding()
        logits = None
        if return_logits:
            logits = softcap(
                jnp.einsum(
                    "btd,vd->btv",
                    final,
                    vocab_rows.astype(dtype),
                    preferred_element_type=jnp.float32,
                ),
                cfg.final_softcap,
            )
        nll, valid = token_nll(final, vocab_rows, input_ids, attention_mask, cfg.final_softcap)
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
    init_std: float = 0.02,
    out_shardings=None,
) -> Decoder:
    """A Decoder with N(0, init_std) weights generated on device inside jit, so
    an 8B-parameter bfloat16 model never exists in host float32; with
    `out_shardings` (e.g. `partition.state_shardings` of the abstract state)
    each parameter is generated in its sharding."""
    make = lambda: Decoder(
        config,
        rngs=nnx.Rngs(seed),
        dtype=dtype,
        param_dtype=param_dtype,
        attn_block=attn_block,
        init_std=init_std,
    )
    graphdef, _ = nnx.split(
        abstract_decoder(config, dtype=dtype, param_dtype=param_dtype, attn_block=attn_block)
    )
    state = jax.jit(lambda: nnx.split(make())[1], out_shardings=out_shardings)()
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
