"""A model bound to an observable set, its options and a device mesh: the fused step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from geom_jax import models, sharding
from geom_jax.errors import ArgumentError
from geom_jax.metrics.declare import registry
from geom_jax.pipeline import schema
from geom_jax.pipeline.step import PromptGeometry, geometry_step


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


def check_token_ids(input_ids, vocab_size: int) -> np.ndarray:
    """``input_ids`` as int32 after checking they are integers in [0, vocab_size).

    Raises:
      ArgumentError: non-integer ids, or the first id outside the vocabulary (which
        the embedding lookup would turn into NaN hidden states), naming its row
        and position.
    """
    ids = np.asarray(input_ids)
    if ids.dtype.kind not in "iu":
        raise ArgumentError(
            "{input_ids} must be integer token ids, got dtype {dtype}", "input_ids", dtype=ids.dtype
        )
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ArgumentError(
            "{input_ids}{where} = {value} is outside the model's vocabulary [0, {vocab})",
            "input_ids",
            where=list(where),
            value=int(ids[where]),
            vocab=vocab_size,
        )
    return ids.astype(np.int32)


class GeometryPipeline:
    """A model bound to the observables, their options and a device mesh.

    Example::

      model, tokenizer = geom_jax.models.load("smollm2-135m")
      pipe = GeometryPipeline(model, range_max=256, max_k=32)
      geo = pipe(input_ids)          # PromptGeometry of (global) jax.Arrays
      rows = pipe.to_host(geo)       # this process's rows as NumPy arrays

    ``observables``: "paper" (default), "all", a comma list or a sequence of
    names (see :mod:`geom_jax.metrics.declare.registry`); their options by keyword
    (``range_max``, ``max_k``, ``id_k``, ``lens``: "logit" or "tuned:DIR",
    ...) or as ``options={...}``. What the observables consume from the model
    (their declared model inputs) is prepared here, once.

    With ``mesh`` (see :mod:`geom_jax.sharding`), parameters are placed by
    their logical axis names (unless already sharded on it), batches are
    split over ``data``, and in a multi-process run each process passes and
    receives only its own rows.
    """

    def __init__(
        self,
        model: models.Decoder,
        *,
        observables="paper",
        layer_chunk: int | None = None,
        mesh: Mesh | None = None,
        rules=None,
        options: dict | None = None,
        **option_values,
    ):
        self.observables = registry.resolve(observables)
        values = dict(options or {})
        values.update(option_values)
        self.options = self.observables.options(values)
        self.vocab_size = model.config.vocab_size
        self.fields = tuple(f.name for f in schema.result_fields(self.observables))
        self.mesh = mesh if mesh is not None else sharding.make_mesh((1, 1), jax.devices()[:1])
        graphdef, state = nnx.split(model)
        self.graphdef = graphdef
        self.state = sharding.place_state(state, self.mesh, rules)
        self.prepared = {
            m.name: m.prepare(model, self.options)
            for m in self.observables.model_inputs
            if m.prepare is not None
        }
        self._step = jax.jit(
            functools.partial(
                geometry_step,
                graphdef,
                mesh=self.mesh,
                observables=self.observables,
                layer_chunk=layer_chunk,
                options=self.options,
            ),
            out_shardings=sharding.batch_sharding(self.mesh),
        )

    def output_shapes(self, batch_size: int, num_tokens: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of a global batch's results (without running it)."""
        ids = jax.ShapeDtypeStruct(
            (batch_size, num_tokens), jnp.int32, sharding=sharding.batch_sharding(self.mesh)
        )
        out = jax.eval_shape(self._step, self.state, ids, ids, prepared=self.prepared)
        return {name: out[name] for name in self.fields}

    def __call__(self, input_ids, attention_mask=None) -> PromptGeometry:
        """Runs this process's rows ``input_ids`` [b, T] (b = batch / processes).

        Raises:
          ArgumentError: non-integer ids, or ids outside the model's vocabulary.
        """
        input_ids = check_token_ids(input_ids, self.vocab_size)
        if attention_mask is None:
            attention_mask = np.ones_like(input_ids)
        ids = sharding.to_global(self.mesh, input_ids)
        mask = sharding.to_global(self.mesh, np.asarray(attention_mask, np.int32))
        return self._step(self.state, ids, mask, prepared=self.prepared)

    def to_host(self, geo: PromptGeometry) -> dict[str, np.ndarray]:
        """This process's rows of a result, as a dict of NumPy arrays."""
        host = sharding.to_host_local(self.mesh, geo)
        return {name: host[name] for name in self.fields}
