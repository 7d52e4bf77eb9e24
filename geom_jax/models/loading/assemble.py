"""Builds Decoder parameters from a tensor source one parameter at a time.

`iter_params` yields (path, array) with each stacked parameter filled layer
by layer into one preallocated host buffer in `param_dtype`; a sharded
loader can place each array on its devices as it arrives. `load_params`
moves each to the device and frees the host copy before reading the next,
so host memory stays near one parameter plus the device copy.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from ..config import DecoderConfig
from .errors import MissingTensorError
from .hf_layout import param_specs


class TensorSource(Protocol):
    def get(self, name: str) -> np.ndarray: ...
    def __contains__(self, name: str) -> bool: ...


def _convert(x: np.ndarray, dtype) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != dtype:
        x = x.astype(np.float32).astype(dtype) if x.dtype.kind not in "fc" else x.astype(dtype)
    return x


def iter_params(cfg: DecoderConfig, source: TensorSource, param_dtype=jnp.float32
                ) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    dtype = np.dtype(jnp.dtype(param_dtype))
    for spec in param_specs(cfg):
        if not spec.stacked:
            if spec.source not in source:
                raise MissingTensorError(f"checkpoint lacks {spec.source!r}")
            yield spec.path, _convert(spec.transform(source.get(spec.source)), dtype)
            continue
        buf = None
        for i in range(cfg.num_layers):
            name = spec.source.format(i=i)
            if name not in source:
                raise MissingTensorError(f"checkpoint lacks {name!r}")
            x = spec.transform(source.get(name))
            if buf is None:
                buf = np.empty((cfg.num_layers,) + x.shape, dtype)
            buf[i] = _convert(x, dtype)
        yield spec.path, buf


def load_params(cfg: DecoderConfig, source: TensorSource, param_dtype=jnp.float32,
                device=None) -> dict:
    """Nested dict of device arrays, shaped like nnx.to_pure_dict(state)."""
    params: dict = {}
    for path, host in iter_params(cfg, source, param_dtype):
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jax.device_put(host, device)
        del host
    return params
