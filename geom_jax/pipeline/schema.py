"""The result schema of the fused step: the observables' fields plus what the model
and the health checks give for every observable set."""

from __future__ import annotations

import jax.numpy as jnp

from geom_jax.metrics.declare import registry
from geom_jax.metrics.declare.observable import Field

MODEL_FIELDS = (
    Field("loss", (), "mean next-token negative log-likelihood (nats).", ""),
    Field("token_nll", ("target",), "per-token negative log-likelihood (nats).", ""),
)
"""Fields the model itself gives for every observable set."""

STATUS_NON_FINITE = 1
"""Status bit of a layer with NaN or inf hidden states (every observable of it is NaN);
the observables declare their own bits (``Observable.status_flags``)."""


def status_flags(observables) -> dict[int, str]:
    """bit -> meaning of the status bits of a run measuring ``observables``."""
    flags = {
        STATUS_NON_FINITE: "NaN or inf in the hidden states: every observable of the layer is NaN"
    }
    for obs in registry.resolve(observables).observables:
        for bit, doc in obs.status_flags.items():
            if bit in flags and flags[bit] != doc:
                raise ValueError(f"status bit {bit} of {obs.name!r} is already taken: {flags[bit]}")
            flags[bit] = doc
    return flags


def health_fields(observables) -> tuple[Field, ...]:
    """Per-layer health of every row: finiteness and the status bits."""
    flags = status_flags(observables)
    return (
        Field(
            "finite",
            (),
            "True where layer l's hidden states are finite at every valid token (every "
            "observable of that layer, and of the pairs it is part of, is NaN otherwise).",
            dtype="bool",
        ),
        Field(
            "status",
            (),
            "bit flags, 0 = healthy: " + "; ".join(f"{b} {d}" for b, d in flags.items()) + ".",
            dtype="int32",
        ),
    )


def result_fields(observables="paper") -> list[Field]:
    """The saved fields of a run measuring ``observables``, in results order."""
    obs = registry.resolve(observables)
    return obs.fields(saved_only=True) + list(MODEL_FIELDS) + list(health_fields(obs))


def layer_status(observables, geo, mask):
    """Bit flags [B, L] of each prompt's layers: non-finite, and the observables' own
    (``Observable.status``, from their fields and the valid-token mask)."""
    finite = geo["finite"]
    flags = jnp.where(finite, 0, STATUS_NON_FINITE)
    for obs in registry.resolve(observables).observables:
        if obs.status is not None:
            flags = flags | jnp.where(finite, obs.status(geo, mask), 0)
    return flags.astype(jnp.int32)
