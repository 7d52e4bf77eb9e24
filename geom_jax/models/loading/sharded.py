"""Decoder parameters created directly as sharded `jax.Array`s.

Each parameter is one `jax.make_array_from_callback`, whose callback runs
for the shards this process's devices hold (each distinct shard read once).
From a source with `get_slice` (safetensors) a shard reads, layer by layer,
only the box of each HF tensor it needs (`Layout.window`); from a source
without it (GGUF, dequantised per tensor) the parameter is assembled once on
the host and every shard is a view of it. Host memory therefore peaks at
this process's distinct shards of one parameter, at most one full parameter
in `param_dtype`, plus one HF tensor's box.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Sharding

from ..config import DecoderConfig
from ..partition import param_axes
from .assemble import TensorSource, convert, host_param
from .hf_layout import ParamSpec, param_specs

Reader = Callable[[tuple], np.ndarray]


def _key(index: tuple) -> tuple:
    return tuple((s.start, s.stop, s.step) if isinstance(s, slice) else s for s in index)


def _once_per_index(read: Reader) -> Reader:
    """Devices that hold the same shard (replicas) share one host array."""
    done: dict[tuple, np.ndarray] = {}

    def cached(index):
        key = _key(index)
        if key not in done:
            done[key] = read(index)
        return done[key]

    return cached


def _box_reader(cfg: DecoderConfig, source, spec: ParamSpec, dtype) -> Reader:
    """Reads a shard of `spec`'s parameter from HF tensor slices."""

    def one(name: str, index: tuple) -> np.ndarray:
        view = source.get_slice(name)
        return convert(spec.transform.read(view, tuple(view.get_shape()), index), dtype)

    def read(index: tuple) -> np.ndarray:
        if not spec.stacked:
            return one(spec.source, index)
        layers = range(cfg.num_layers)[index[0]]
        out = None
        for j, i in enumerate(layers):
            x = one(spec.source.format(i=i), index[1:])
            if out is None:
                out = np.empty((len(layers),) + x.shape, dtype)
            out[j] = x
        return out

    return read


def _host_reader(cfg: DecoderConfig, source, spec: ParamSpec, dtype) -> Reader:
    host = host_param(cfg, source, spec, dtype)
    return lambda index: host[index]


def sharded_param(
    cfg: DecoderConfig, source: TensorSource, spec: ParamSpec, dtype, sharding: Sharding
) -> jax.Array:
    shape = param_axes(cfg)[spec.path].shape
    reader = _box_reader if hasattr(source, "get_slice") else _host_reader
    read = _once_per_index(reader(cfg, source, spec, dtype))
    return jax.make_array_from_callback(shape, sharding, read)


def load_sharded_params(
    cfg: DecoderConfig,
    source: TensorSource,
    param_dtype,
    shardings: dict[tuple[str, ...], Sharding],
) -> dict:
    """Nested dict (as nnx.to_pure_dict) of arrays placed by `shardings`
    (path -> Sharding, e.g. `partition.param_shardings`)."""
    dtype = np.dtype(jnp.dtype(param_dtype))
    return traverse_util.unflatten_dict(
        {
            spec.path: sharded_param(cfg, source, spec, dtype, shardings[spec.path])
            for spec in param_specs(cfg)
        }
    )
