"""Readers of config.json shared by the families: keys, RoPE, activations, layer types.

Each refuses a value the decoder does not implement with one line naming the
key, its value and the family.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

from ..config import ROPE_TYPES, Activation, RopeScaling, UnsupportedArchitectureError

ACTIVATIONS = get_args(Activation)


def get(d: Mapping[str, Any], *keys, default=None):
    """The first of `keys` present in `d` with a non-None value."""
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return default


def refuse(family: str, key: str, value, why: str = "") -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"config key {key}={value!r} is not supported by the {family!r} family port"
        + (f" ({why})" if why else "")
    )


ROPE_KEYS = frozenset({"rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor"})


def rope(d: Mapping[str, Any], family: str, params=None):
    """(theta, RopeScaling or None, partial-rotary factor) from either the
    transformers 5 `rope_parameters` dict (or `params`, one entry of it) or
    the older top-level keys."""
    if params is None:
        params = d.get("rope_parameters") or {}
        if isinstance(params, Mapping) and "rope_theta" not in params and params:
            first = next(iter(params.values()))
            if isinstance(first, Mapping):
                raise refuse(family, "rope_parameters", dict(params), "per-layer-type RoPE")
    legacy = d.get("rope_scaling") or {}
    merged = {**legacy, **params}
    theta = float(
        get(merged, "rope_theta", default=get(d, "rope_theta", "rotary_emb_base", default=1e4))
    )
    partial = float(
        get(
            merged,
            "partial_rotary_factor",
            default=get(d, "partial_rotary_factor", "rotary_pct", default=1.0),
        )
    )
    rope_type = get(merged, "rope_type", "type", default="default")
    if rope_type not in ROPE_TYPES:
        key = "rope_parameters" if d.get("rope_parameters") else "rope_scaling"
        raise UnsupportedArchitectureError(
            f"config key {key} has rope_type={rope_type!r}, which the {family!r} family port "
            f"does not implement; supported: {', '.join(ROPE_TYPES)}"
        )
    if rope_type == "default":
        return theta, None, partial
    scaling = RopeScaling(
        rope_type=rope_type,
        factor=float(merged["factor"]),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(
            merged.get("original_max_position_embeddings", d.get("max_position_embeddings", 8192))
        ),
    )
    return theta, scaling, partial


def activation(d: Mapping[str, Any], family: str, *keys: str, default: str) -> str:
    """The activation named by the first present of `keys`, refused with its
    key and value when the decoder has no such activation."""
    for key in keys:
        if d.get(key) is not None:
            if d[key] not in ACTIVATIONS:
                raise refuse(family, key, d[key], f"supported: {', '.join(ACTIVATIONS)}")
            return str(d[key])
    return default


def layer_types(d: Mapping[str, Any], family: str, num_layers: int):
    """`layer_types` ('full_attention' / 'sliding_attention' per layer) ->
    per-layer sliding flags, or None when absent."""
    types = d.get("layer_types")
    if types is None:
        return None
    known = {"full_attention", "sliding_attention"}
    if len(types) != num_layers or not set(types) <= known:
        raise refuse(family, "layer_types", list(types), f"expected {num_layers} of {known}")
    return tuple(t == "sliding_attention" for t in types)


__all__ = ["ACTIVATIONS", "ROPE_KEYS", "activation", "get", "layer_types", "refuse", "rope"]
