"""The fused step: token ids -> model forward -> every geometric observable.

One jitted function runs the decoder, keeps all hidden states on the device,
and reduces them with :func:`geom_jax.metrics.layer_geometry` to a few
numbers per prompt and layer. Following the paper (Sec. 3), intrinsic
dimension and neighbourhood overlap are measured on the L transformer layers
(the embedding output is left out) and cosine similarity on all L + 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

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


@jax.tree_util.register_pytree_node_class
class PromptGeometry(metrics.LayerGeometry):
    """Per-prompt results of one batch (leading axis B): field name -> array.

    The fields are those of the requested observables (see
    :func:`result_fields`); the paper's set gives gride_ids, gride_errs,
    gride_scales [B, L, S], twonn [B, L], cos_mean, cos_std [B, L+1]
    (embedding output first), overlap [B, L-1, K], plus, always, loss [B]
    (mean next-token negative log-likelihood) and token_nll [B, T-1]
    (per-token negative log-likelihood, 0 on padding).
    """


MODEL_FIELDS = (
    metrics.registry.Field("loss", (), "mean next-token negative log-likelihood (nats).", ""),
    metrics.registry.Field("token_nll", ("T-1",), "per-token negative log-likelihood (nats).", ""),
)
"""Fields the model itself gives for every observable set."""

STATUS_NON_FINITE = 1
STATUS_FEW_DISTINCT = 2
STATUS_DUPLICATES = 4
STATUS_FLAGS = {
    STATUS_NON_FINITE: "NaN or inf in the hidden states: every observable of the layer is NaN",
    STATUS_FEW_DISTINCT: "fewer distinct tokens than the largest GRIDE scale needs: NaN there",
    STATUS_DUPLICATES: "tokens merged as exact or near-duplicates for the ID estimators",
}

HEALTH_FIELDS = (
    metrics.registry.Field(
        "finite",
        (),
        "1 where layer l's hidden states are finite at every valid token, else 0 (every "
        "observable of that layer, and of the pairs it is part of, is then NaN).",
    ),
    metrics.registry.Field(
        "status",
        (),
        "bit flags, 0 = healthy: "
        + "; ".join(f"{bit} {doc}" for bit, doc in STATUS_FLAGS.items())
        + ".",
    ),
)
"""Per-layer health of every row, for every observable set."""


def result_fields(observables="paper") -> list[metrics.registry.Field]:
    """The saved fields of a run measuring ``observables``, in results order."""
    names = metrics.registry.resolve(observables)
    return (
        metrics.registry.fields(names, saved_only=True) + list(MODEL_FIELDS) + list(HEALTH_FIELDS)
    )


RESULT_FIELDS = tuple(f.name for f in result_fields("paper"))

MODEL_INPUTS: dict[str, Callable[[Any, Any], jax.Array]] = {}
"""Inputs the pipeline derives from the model for observables that consume them:
name -> fn(model, forward_output) -> array (see register_model_input)."""


MODEL_INPUT_PREPARE: dict[str, Callable] = {}
"""name -> prepare(model, options) of the model inputs that have one."""


def register_model_input(
    name: str, fn, *, per_prompt: bool, doc: str, prepare: Callable | None = None
) -> None:
    """Lets observables consume ``name``: fn(model: nnx.Module, out: DecoderOutput)
    -> an array ([B, ...] when per_prompt, else shared, e.g. the unembedding
    [V, D]); computed inside the jitted step only when a requested observable
    consumes it, and passed to layer_geometry as ``inputs[name]``.

    With ``prepare``, prepare(model, options) (options: the pipeline's
    ``options={...}`` dict) runs once per GeometryPipeline, its arrays (e.g. a
    factor of the unembedding, a tuned lens) are arguments of the jitted step
    (not constants baked into it), and fn is called as fn(model, out, prepared)."""
    metrics.registry.register_input(name, per_prompt, doc)
    MODEL_INPUTS[name] = fn
    if prepare is None:
        MODEL_INPUT_PREPARE.pop(name, None)
    else:
        MODEL_INPUT_PREPARE[name] = prepare


def model_inputs_of(observables) -> tuple[str, ...]:
    """The model inputs the observables consume, in a stable order."""
    names = metrics.registry.resolve(observables)
    used = {c for n in names for c in metrics.registry.get(n).consumes}
    return tuple(k for k in MODEL_INPUTS if k in used)


def geometry_from_hidden(
    hidden: jax.Array,
    token_nll: jax.Array,
    attention_mask: jax.Array,
    inputs: dict | None = None,
    *,
    range_max: int | None,
    max_k: int,
    layer_chunk: int | None = None,
    observables="paper",
    **options,
) -> PromptGeometry:
    """Reduces hidden states [L+1, B, T, D] and token NLL [B, T-1] per prompt.

    Layer observables run on the L transformer layers; those declared with
    ``embedding=True`` (cosine) also on the embedding output, first. inputs:
    more arrays for observables that consume them (registry.INPUTS), besides
    token_nll. options: id_k, entropy_alpha, ... (see layer_geometry).
    """
    names = metrics.registry.resolve(observables)
    hidden = jnp.moveaxis(hidden, 0, 1).astype(jnp.float32)
    mask = attention_mask.astype(bool)
    target_mask = mask[:, 1:].astype(jnp.float32)
    token_nll = token_nll * target_mask
    geo = metrics.layer_geometry(
        hidden[:, 1:],
        mask,
        observables=names,
        range_max=range_max,
        max_k=max_k,
        layer_chunk=layer_chunk,
        inputs={"token_nll": token_nll, **(inputs or {})},
        **options,
    )
    out = {}
    for f in result_fields(names):
        if f.name in geo:
            out[f.name] = geo[f.name]
    for name in names:
        obs = metrics.registry.get(name)
        if not obs.embedding:
            continue
        if name == "cosine":  # the standalone function, as before the registry (same bits)
            emb_mean, emb_std = metrics.cosine_similarity_stats(hidden[:, 0], mask)
            emb = {"cos_mean": emb_mean[:, None], "cos_std": emb_std[:, None]}
        else:
            emb = metrics.layer_geometry(
                hidden[:, :1], mask, observables=(name,), validate=False, **options
            )
        for f in obs.fields:
            if f.saved:
                out[f.name] = jnp.concatenate([emb[f.name], out[f.name]], axis=1)
    out["loss"] = jnp.sum(token_nll, axis=-1) / jnp.maximum(jnp.sum(target_mask, axis=-1), 1.0)
    out["token_nll"] = token_nll
    out["finite"] = geo["finite"].astype(jnp.int32)
    out["status"] = layer_status(geo, mask)
    return PromptGeometry(out)


def layer_status(geo, mask):
    """Bit flags [B, L] (STATUS_FLAGS) of each prompt's layers; the distinct-token
    flags need the ID estimators' n_unique (GRIDE's, in the paper's set)."""
    finite = geo["finite"]
    flags = jnp.where(finite, 0, STATUS_NON_FINITE)
    if "n_unique" in geo:
        n_unique = geo["n_unique"]
        if "gride_ids" in geo:
            largest_n2 = 2 ** geo["gride_ids"].shape[-1]
            flags |= jnp.where(finite & (n_unique - 1 < largest_n2), STATUS_FEW_DISTINCT, 0)
        n_valid = jnp.sum(mask, axis=-1)[:, None]
        flags |= jnp.where(finite & (n_unique < n_valid), STATUS_DUPLICATES, 0)
    return flags.astype(jnp.int32)


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
    observables="paper",
    prepared: dict | None = None,
    **options,
) -> PromptGeometry:
    """Forward and metrics for a batch; pure, so it can be jitted.

    The forward (and the model inputs of MODEL_INPUTS that the observables
    consume, from ``prepared``) runs under GSPMD (parameters sharded as
    placed, batch over ``data``); the metrics run under ``shard_map`` where
    the hidden states live, one slice of the batch per device group.
    """
    out = models.forward(graphdef, state, input_ids, attention_mask)
    axes = sharding.batch_axes(mesh, input_ids.shape[0])
    names = metrics.registry.resolve(observables)
    wanted = {c for n in names for c in metrics.registry.get(n).consumes if c in MODEL_INPUTS}
    inputs = {}
    if wanted:
        model = nnx.merge(graphdef, state)
        prepared = prepared or {}
        inputs = {
            c: MODEL_INPUTS[c](model, out, prepared[c])
            if c in prepared
            else MODEL_INPUTS[c](model, out)
            for c in sorted(wanted)
        }
    specs = {c: P(axes) if metrics.registry.INPUTS[c][0] else P() for c in inputs}
    reduce = jax.shard_map(
        functools.partial(
            geometry_from_hidden,
            range_max=range_max,
            max_k=max_k,
            layer_chunk=layer_chunk,
            observables=names,
            **options,
        ),
        mesh=mesh,
        in_specs=(P(None, axes), P(axes), P(axes), specs),
        out_specs=P(axes),
        check_vma=False,
    )
    return reduce(out.hidden_states, out.token_nll, attention_mask, inputs)


def check_token_ids(input_ids, vocab_size: int) -> np.ndarray:
    """``input_ids`` as int32 after checking they are integers in [0, vocab_size)."""
    ids = np.asarray(input_ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"input_ids{list(where)} = {int(ids[where])} is outside the model's vocabulary "
            f"[0, {vocab_size})"
        )
    return ids.astype(np.int32)


class GeometryPipeline:
    """A model bound to the metric settings and a device mesh.

    Example::

      model, tokenizer = geom_jax.models.load("smollm2-135m")
      pipe = GeometryPipeline(model, range_max=256, max_k=32)
      geo = pipe(input_ids)          # PromptGeometry of (global) jax.Arrays
      rows = pipe.to_host(geo)       # this process's rows as NumPy arrays

    ``observables``: "paper" (default), "all", a comma list or a sequence of
    names (see :mod:`geom_jax.metrics.registry`); ``options``: id_k,
    entropy_alpha (see ``layer_geometry``), and ``options={...}`` for
    observables registered outside the metrics (e.g. ``lens``: "logit" or
    "tuned:DIR", ``logit_range_max``: 64 for ``lens`` / ``logit_id``).
    What those consume from the model (MODEL_INPUTS) is prepared here, once.

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
        observables="paper",
        **options,
    ):
        self.observables = metrics.registry.resolve(observables)
        self.vocab_size = model.config.vocab_size
        self.fields = tuple(f.name for f in result_fields(self.observables))
        self.mesh = mesh if mesh is not None else sharding.make_mesh((1, 1), jax.devices()[:1])
        graphdef, state = nnx.split(model)
        self.graphdef = graphdef
        self.state = sharding.place_state(state, self.mesh, rules)
        extra = options.get("options") or {}
        self.prepared = {
            name: MODEL_INPUT_PREPARE[name](model, extra)
            for name in model_inputs_of(self.observables)
            if name in MODEL_INPUT_PREPARE
        }
        self._step = jax.jit(
            functools.partial(
                geometry_step,
                graphdef,
                mesh=self.mesh,
                range_max=range_max,
                max_k=max_k,
                layer_chunk=layer_chunk,
                observables=self.observables,
                **options,
            ),
            out_shardings=sharding.batch_sharding(self.mesh),
        )

    def output_shapes(self, batch_size: int, num_tokens: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes of a global batch's results (without running it)."""
        ids = jax.ShapeDtypeStruct(
            (batch_size, num_tokens), jnp.int32, sharding=sharding.batch_sharding(self.mesh)
        )
        out = jax.eval_shape(self._step, self.state, ids, ids, prepared=self.prepared)
        return {name: out[name] for name in self.fields}

    def __call__(self, input_ids, attention_mask=None) -> PromptGeometry:
        """Runs this process's rows ``input_ids`` [b, T] (b = batch / processes).

        Raises:
          ValueError: non-integer ids, or ids outside the model's vocabulary
            (which the embedding lookup would turn into NaN hidden states).
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


from geom_jax.lens import observables as _lens_observables  # noqa: E402

_lens_observables.register()  # the lens and logit_id observables (they need MODEL_INPUTS)
