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
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from geom_jax import metrics, models, sharding


def execution_dtypes(dtype, param_dtype, platform: str | None = None):
    """(compute dtype, parameter dtype) to run a requested (dtype, param_dtype) with.

    On CPU, XLA runs bfloat16 matmuls at about the float32 rate plus
    conversions, so a bfloat16 compute request runs in float32 from the
    requested parameters (bfloat16 weights stay bfloat16 in memory and are
    widened per layer; activations are not rounded to bfloat16). Elsewhere
    the request is kept.
    """
    dtype, param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)
    platform = platform or jax.default_backend()
    if platform == "cpu" and dtype == jnp.bfloat16:
        return jnp.dtype(jnp.float32), param_dtype
    return dtype, param_dtype


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
    range_max: int | None,
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
    mesh: Mesh,
    range_max: int | None,
    max_k: int,
    layer_chunk: int | None = None,
) -> PromptGeometry:
    """Forward and metrics for a batch; pure, so it can be jitted.

    The forward runs under GSPMD (parameters sharded as placed, batch over
    ``data``); the metrics run under ``shard_map`` where the hidden states
    live, one slice of the batch per device group.
    """
    out = models.forward(graphdef, state, input_ids, attention_mask)
    axes = sharding.batch_axes(mesh, input_ids.shape[0])
    reduce = jax.shard_map(
        functools.partial(
            geometry_from_hidden, range_max=range_max, max_k=max_k, layer_chunk=layer_chunk
        ),
        mesh=mesh,
        in_specs=(P(None, axes), P(axes), P(axes)),
        out_specs=P(axes),
        check_vma=False,
    )
    return reduce(out.hidden_states, out.token_nll, attention_mask)


class GeometryPipeline:
    """A model bound to the metric settings and a device mesh.

    Example::

      model, tokenizer = geom_jax.models.load("smollm2-135m")
      pipe = GeometryPipeline(model, range_max=256, max_k=32)
      geo = pipe(input_ids)          # PromptGeometry of (global) jax.Arrays
      rows = pipe.to_host(geo)       # this process's rows as NumPy arrays

    With ``mesh`` (see :mod:`geom_jax.sharding`), parameters are placed by
    their logical axis names (unless already sharded on it), batches are
    split over ``data``, and in a multi-process run each process passes and
    receives only its own rows.
    """

    def __init__(
        self,
        model: models.Decoder,
        *,
        range_max: int | None = None,
        max_k: int = 32,
        layer_chunk: int | None = None,
        mesh: Mesh | None = None,
        rules=None,
    ):
        self.mesh = mesh if mesh is not None else sharding.make_mesh((1, 1), jax.devices()[:1])
        graphdef, state = nnx.split(model)
        self.graphdef = graphdef
        self.state = sharding.place_state(state, self.mesh, rules)
        self._step = jax.jit(
            functools.partial(
                geometry_step,
                graphdef,
                mesh=self.mesh,
                range_max=range_max,
                max_k=max_k,
                layer_chunk=layer_chunk,
            ),
            out_shardings=sharding.batch_sharding(self.mesh),
        )

    def output_shapes(self, batch_size: int, num_tokens: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes of a global batch's results (without running it)."""
        ids = jax.ShapeDtypeStruct(
            (batch_size, num_tokens), jnp.int32, sharding=sharding.batch_sharding(self.mesh)
        )
        out = jax.eval_shape(self._step, self.state, ids, ids)
        return {name: getattr(out, name) for name in RESULT_FIELDS}

    def __call__(self, input_ids, attention_mask=None) -> PromptGeometry:
        """Runs this process's rows ``input_ids`` [b, T] (b = batch / processes)."""
        input_ids = np.asarray(input_ids, np.int32)
        if attention_mask is None:
            attention_mask = np.ones_like(input_ids)
        ids = sharding.to_global(self.mesh, input_ids)
        mask = sharding.to_global(self.mesh, np.asarray(attention_mask, np.int32))
        return self._step(self.state, ids, mask)

    def to_host(self, geo: PromptGeometry) -> dict[str, np.ndarray]:
        """This process's rows of a result, as a dict of NumPy arrays."""
        host = sharding.to_host_local(self.mesh, geo)
        return {name: getattr(host, name) for name in RESULT_FIELDS}
