"""The fused step: token ids -> model forward -> every geometric observable.

One jitted function runs the decoder, keeps all hidden states on the device,
and reduces them with :func:`geom_jax.metrics.stack_geometry` to a few numbers
per prompt and layer. The decoder's layer-major stack [L+1, B, T, D] goes to
the metrics as it is. Following the paper (Sec. 3), the observables are
measured on the L transformer layers; those declared with ``embedding=True``
(cosine) also on the embedding output, first.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from geom_jax import metrics, models, sharding
from geom_jax.metrics.declare import registry
from geom_jax.pipeline import schema


@jax.tree_util.register_pytree_node_class
class PromptGeometry(metrics.LayerGeometry):
    """Per-prompt results of one batch (leading axis B): field name -> array.

    The fields are those of the requested observables (see
    :func:`schema.result_fields`); the paper's set gives gride_ids, gride_errs,
    gride_scales [B, L, S], twonn [B, L], cos_mean, cos_std [B, L+1]
    (embedding output first), overlap [B, L-1, K], plus, always, loss [B]
    (mean next-token negative log-likelihood), token_nll [B, T-1] (per-token
    negative log-likelihood, 0 on padding), finite and status [B, L].
    """


def cloud_geometry(
    hidden: jax.Array,
    mask: jax.Array,
    inputs: dict | None = None,
    *,
    observables="paper",
    layer_chunk: int | None = None,
    options: dict | None = None,
    validate: bool = False,
    mesh=None,
) -> dict:
    """The observables of clouds hidden [L+1, B, N, D] (embedding output first), mask
    [B, N]: every observable on the L layers after the first, and those declared with
    ``embedding=True`` on the first too (their fields get the "L+1" axis). With ``mesh``,
    the row-blocked path splits each cloud's rows over its data axis. Returns the saved
    fields, ``finite`` and ``status`` [B, L]."""
    observables = registry.resolve(observables)
    geo = metrics.stack_geometry(
        hidden[1:],
        mask,
        observables=observables,
        layer_chunk=layer_chunk,
        inputs=inputs,
        options=options,
        validate=validate,
        mesh=mesh,
    )
    out = {f.name: geo[f.name] for f in observables.fields(saved_only=True) if f.name in geo}
    embedding = [o for o in observables.observables if o.embedding]
    if embedding:
        emb = metrics.stack_geometry(
            hidden[:1],
            mask,
            observables=[o.name for o in embedding],
            options=options,
            validate=False,
            mesh=mesh,
        )
        for obs in embedding:
            for f in obs.saved_fields():
                out[f.name] = jnp.concatenate([emb[f.name], out[f.name]], axis=1)
    out["finite"] = geo["finite"]
    out["status"] = schema.layer_status(observables, geo, mask)
    return out


def geometry_from_hidden(
    hidden: jax.Array,
    token_nll: jax.Array,
    attention_mask: jax.Array,
    inputs: dict | None = None,
    *,
    observables="paper",
    layer_chunk: int | None = None,
    options: dict | None = None,
) -> PromptGeometry:
    """Reduces hidden states [L+1, B, T, D] and token NLL [B, T-1] per prompt.

    Layer observables run on the L transformer layers; those declared with
    ``embedding=True`` also on the embedding output, first (:func:`cloud_geometry`).
    inputs: more arrays for observables that consume them (registry.INPUTS), besides
    token_nll. options: the observables' option values (see layer_geometry).
    """
    mask = attention_mask.astype(bool)
    target_mask = mask[:, 1:].astype(jnp.float32)
    token_nll = token_nll * target_mask
    out = cloud_geometry(
        hidden.astype(jnp.float32),
        mask,
        {"token_nll": token_nll, **(inputs or {})},
        observables=observables,
        layer_chunk=layer_chunk,
        options=options,
        validate=True,
    )
    fields = {k: v for k, v in out.items() if k not in ("finite", "status")}
    fields["loss"] = jnp.sum(token_nll, axis=-1) / jnp.maximum(jnp.sum(target_mask, axis=-1), 1.0)
    fields["token_nll"] = token_nll
    fields["finite"], fields["status"] = out["finite"], out["status"]
    return PromptGeometry(fields)


def model_inputs(observables, model, out, prepared: dict) -> dict:
    """The arrays the observables' declared model inputs derive from the model."""
    return {
        m.name: m.fn(model, out, prepared[m.name]) if m.name in prepared else m.fn(model, out)
        for m in registry.resolve(observables).model_inputs
    }


def geometry_step(
    graphdef: Any,
    state: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    mesh: Mesh,
    observables="paper",
    layer_chunk: int | None = None,
    options: dict | None = None,
    prepared: dict | None = None,
) -> PromptGeometry:
    """Forward and metrics for a batch; pure, so it can be jitted.

    The forward (and the observables' model inputs, from ``prepared``) runs
    under GSPMD (parameters sharded as placed, batch over ``data``); the
    metrics run under ``shard_map`` where the hidden states live, one slice of
    the batch per device group (specs from :func:`sharding.metrics_specs`).
    """
    observables = registry.resolve(observables)
    out = models.forward(graphdef, state, input_ids, attention_mask)
    inputs = {}
    if observables.model_inputs:
        inputs = model_inputs(observables, nnx.merge(graphdef, state), out, prepared or {})
    specs = sharding.metrics_specs(mesh, input_ids.shape[0])
    per_row = {m.name: m.per_prompt for m in observables.model_inputs}
    input_specs = {c: specs["rows"] if per_row[c] else specs["shared"] for c in inputs}
    reduce = jax.shard_map(
        functools.partial(
            geometry_from_hidden,
            observables=observables,
            layer_chunk=layer_chunk,
            options=options,
        ),
        mesh=mesh,
        in_specs=(specs["hidden"], specs["rows"], specs["rows"], input_specs),
        out_specs=specs["rows"],
        check_vma=False,
    )
    return reduce(out.hidden_states, out.token_nll, attention_mask, inputs)
