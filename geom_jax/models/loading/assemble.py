"""Builds Decoder parameters from a tensor source one parameter at a time.

`iter_params` yields (path, array) with each stacked parameter filled layer
by layer into one preallocated host buffer in `param_dtype` (`host_param`);
`sharded.py` builds mesh-sharded arrays shard by shard instead. `load_params`
moves each to the device and frees the host copy before reading the next,
so host memory stays near one parameter plus the device copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ..config import DecoderConfig
from .errors import MissingTensorError
from .hf_layout import ParamSpec, param_specs


class TensorSource(Protocol):
    def get(self, name: str) -> np.ndarray: ...
    def __contains__(self, name: str) -> bool: ...


def convert(x: np.ndarray, dtype) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != dtype:
        x = x.astype(np.float32).astype(dtype) if x.dtype.kind not in "fc" else x.astype(dtype)
    return x


def _get(source: TensorSource, name: str) -> np.ndarray:
    if name not in source:
        raise MissingTensorError(f"checkpoint lacks {name!r}")
    return source.get(name)


def host_param(cfg: DecoderConfig, source: TensorSource, spec: ParamSpec, dtype) -> np.ndarray:
    """One parameter on the host in `dtype`, a stacked one filled layer by layer."""
    if not spec.stacked:
        return convert(spec.transform(_get(source, spec.source)), dtype)
    buf = None
    for i in range(cfg.num_layers):
        x = spec.transform(_get(source, spec.source.format(i=i)))
        if buf is None:
            buf = np.empty((cfg.num_layers,) + x.shape, dtype)
        buf[i] = convert(x, dtype)
    return buf


def iter_params(
    cfg: DecoderConfig, source: TensorSource, param_dtype=jnp.float32
) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    dtype = np.dtype(jnp.dtype(param_dtype))
    for spec in param_specs(cfg):
        yield spec.path, host_param(cfg, source, spec, dtype)


def load_params(
    cfg: DecoderConfig, source: TensorSource, param_dtype=jnp.float32, device=None
) -> dict:
    """Nested dict of device arrays, shaped like nnx.to_pure_dict(state)."""
    return traverse_util.unflatten_dict(
        {path: jax.device_put(host, device) for path, host in iter_params(cfg, source, param_dtype)}
    )
