"""Device meshes and every sharding of the fused step, from logical axis names.

The mesh has two axes: ``data`` (prompts) and ``model`` (the decoder's
vocabulary, heads and MLP dimensions). Every placement, of parameters,
activations and batches alike, goes through one route:
:func:`geom_jax.models.partition.mesh_spec` over the rules of
:mod:`geom_jax.models.axes` (MaxText-style logical sharding; a name without a
rule is an error). The forward runs under GSPMD with the batch over ``data``;
the metrics run under ``shard_map`` where the hidden states live, the batch
spread over every device when it divides evenly (``metrics_batch``), so only
the small per-prompt results ever cross devices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from geom_jax.errors import ArgumentError, value_error
from geom_jax.models import partition
from geom_jax.models.axes import (
    ACTIVATION_EMBED,
    BATCH,
    DATA,
    LAYERS,
    MESH_AXES,
    METRICS_BATCH,
    MODEL,
    SEQUENCE,
)


def spec(*names: str | None, rules=None) -> PartitionSpec:
    """PartitionSpec of an array whose axes have these logical names."""
    return partition.mesh_spec(tuple(names), rules)


def parse_mesh_shape(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"4,2"`` / ``"4x2"`` / ``(4, 2)`` -> (4, 2); None or "" -> None."""
    if text is None or text == "" or (not isinstance(text, str) and len(text) == 0):
        return None
    parts = text.replace("x", ",").split(",") if isinstance(text, str) else list(text)
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise value_error("mesh_shape", repr(text), "is not two integers 'DATA,MODEL'") from None
    if len(shape) != 2 or min(shape) < 1:
        raise value_error("mesh_shape", repr(text), "is not two positive integers 'DATA,MODEL'")
    return shape


def make_mesh(
    mesh_shape: Sequence[int] | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A ('data', 'model') mesh; by default every device on ``data``.

    Raises:
      ArgumentError: when the shape does not use exactly the available devices,
        naming both numbers.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = tuple(mesh_shape) if mesh_shape is not None else (len(devices), 1)
    if math.prod(shape) != len(devices):
        raise ArgumentError(
            "{mesh_shape}={shape} needs {needed} devices, but {available} are available",
            "mesh_shape",
            shape=f"{shape[0]},{shape[1]}",
            needed=math.prod(shape),
            available=len(devices),
        )
    axis_types = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def metrics_batch(mesh: Mesh, batch_size: int) -> str:
    """The logical name of a batch's rows in the metrics: every device if they divide it."""
    return METRICS_BATCH if batch_size % mesh.size == 0 else BATCH


def metrics_specs(mesh: Mesh, batch_size: int) -> dict[str, PartitionSpec]:
    """Specs of the metrics' shard_map: the hidden stack [L+1, B, T, D], per-row arrays
    [B, ...] and the per-row results."""
    rows = metrics_batch(mesh, batch_size)
    return {
        "hidden": spec(LAYERS, rows, SEQUENCE, ACTIVATION_EMBED),
        "rows": spec(rows),
        "shared": spec(),
    }


def check_batch(mesh: Mesh, batch_size: int) -> None:
    """Raises ArgumentError unless ``batch_size`` splits over the ``data`` axis."""
    data = mesh.shape[DATA]
    if batch_size % data:
        raise value_error(
            "batch_size", batch_size, f"is not divisible by the 'data' mesh axis of size {data}"
        )


def place_state(state, mesh: Mesh, rules=None):
    """Moves an NNX state onto ``mesh`` (a no-op for arrays already there), placed by
    :func:`geom_jax.models.partition.state_shardings`, the loader's route."""
    return jax.device_put(state, partition.state_shardings(state, mesh, rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch [B, ...] between host and devices: rows over ``data``."""
    return NamedSharding(mesh, spec(BATCH))


def to_global(mesh: Mesh, local):
    """A global batch array from this process's rows (the batch axis over ``data``)."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local)


def to_host_local(mesh: Mesh, tree):
    """This process's rows of batch-sharded outputs, as NumPy arrays."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    local = multihost_utils.global_array_to_host_local_array(tree, mesh, spec(BATCH))
    return jax.tree.map(np.asarray, local)


__all__ = [
    "DATA",
    "MODEL",
    "MESH_AXES",
    "batch_sharding",
    "check_batch",
    "make_mesh",
    "metrics_batch",
    "metrics_specs",
    "parse_mesh_shape",
    "place_state",
    "spec",
    "to_global",
    "to_host_local",
]
