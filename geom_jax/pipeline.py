"""The fused step: token ids -> model forward -> every geometric observable.

One jitted function runs the decoder, keeps all hidden states on the device,
and reduces them with :func:`geom_jax.metrics.layer_geometry` to a few
numbers per prompt and layer. Following the paper (Sec. 3), intrinsic
dimension and neighbourhood overlap are measured on the L transformer layers
(the embedding output is left out) and cosine similarity on all L + 1.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from geom_jax import metrics, models


@flax.struct.dataclass
class PromptGeometry:
    """Per-prompt results of one batch (leading axis B).

    Attributes:
      gride_ids, gride_errs, gride_scales: [B, L, S] GRIDE at n1 = 2^j.
      twonn: [B, L] TwoNN intrinsic dimension.
      overlap: [B, L-1, K] chi_k between layers l and l+1, k = 1..K at k-1.
      cos_mean, cos_std: [B, L+1] cosine-similarity statistics, embedding first.
      loss: [B] mean next-token negative log-likelihood of each prompt.
      token_nll: [B, T-1] per-token negative log-likelihood (0 on padding).
    """

    gride_ids: jax.Array
    gride_errs: jax.Array
    gride_scales: jax.Array
    twonn: jax.Array
    overlap: jax.Array
    cos_mean: jax.Array
    cos_std: jax.Array
    loss: jax.Array
    token_nll: jax.Array


RESULT_FIELDS = tuple(f.name for f in PromptGeometry.__dataclass_fields__.values())


def geometry_from_hidden(
    hidden: jax.Array,
    token_nll: jax.Array,
    attention_mask: jax.Array,
    *,
    range_max: int,
    max_k: int,
    layer_chunk: int | None = None,
) -> PromptGeometry:
    """Reduces hidden states [L+1, B, T, D] and token NLL [B, T-1] per prompt."""
    hidden = jnp.moveaxis(hidden, 0, 1).astype(jnp.float32)
    mask = attention_mask.astype(bool)
    geo = metrics.layer_geometry(
        hidden[:, 1:], mask, range_max=range_max, max_k=max_k, layer_chunk=layer_chunk
    )
    emb_mean, emb_std = metrics.cosine_similarity_stats(hidden[:, 0], mask)
    target_mask = mask[:, 1:].astype(jnp.float32)
    loss = jnp.sum(token_nll * target_mask, axis=-1) / jnp.maximum(
        jnp.sum(target_mask, axis=-1), 1.0
    )
    return PromptGeometry(
        gride_ids=geo.gride_ids,
        gride_errs=geo.gride_errs,
        gride_scales=geo.gride_scales,
        twonn=geo.twonn,
        overlap=geo.overlap,
        cos_mean=jnp.concatenate([emb_mean[:, None], geo.cos_mean], axis=1),
        cos_std=jnp.concatenate([emb_std[:, None], geo.cos_std], axis=1),
        loss=loss,
        token_nll=token_nll * target_mask,
    )


def geometry_step(
    graphdef: Any,
    state: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    range_max: int,
    max_k: int,
    layer_chunk: int | None = None,
) -> PromptGeometry:
    """Forward and metrics for a batch; pure, so it can be jitted or sharded."""
    out = models.forward(graphdef, state, input_ids, attention_mask)
    return geometry_from_hidden(
        out.hidden_states,
        out.token_nll,
        attention_mask,
        range_max=range_max,
        max_k=max_k,
        layer_chunk=layer_chunk,
    )


class GeometryPipeline:
    """A model bound to the metric settings; call it on batches of token ids.

    Example::

      model, tokenizer = geom_jax.models.load("smollm2-135m")
      pipe = GeometryPipeline(model, range_max=256, max_k=32)
      geo = pipe(input_ids)          # PromptGeometry of device arrays
    """

    def __init__(
        self,
        model: models.Decoder,
        *,
        range_max: int = 256,
        max_k: int = 32,
        layer_chunk: int | None = None,
    ):
        self.model = model
        self.range_max = range_max
        self.max_k = max_k
        self.layer_chunk = layer_chunk
        self.graphdef, self.state = nnx.split(model)
        self._step = jax.jit(
            functools.partial(
                geometry_step, range_max=range_max, max_k=max_k, layer_chunk=layer_chunk
            ),
            static_argnums=0,
        )

    def validate(self, num_tokens: int) -> None:
        """Raises ValueError if prompts of ``num_tokens`` tokens are too short."""
        metrics.check_sizes(num_tokens, range_max=self.range_max, max_k=self.max_k)

    def __call__(self, input_ids, attention_mask=None) -> PromptGeometry:
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        return self._step(self.graphdef, self.state, input_ids, jnp.asarray(attention_mask))
