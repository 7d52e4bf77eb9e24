"""Device meshes and shardings for the fused forward-and-metrics step.

The mesh has two axes: ``data`` (prompts) and ``model`` (the decoder's
vocabulary, heads and MLP dimensions, as in MaxText's logical-axis rules,
:data:`geom_jax.models.RULES`). The forward runs under GSPMD with the
parameters sharded by those rules and the batch over ``data``; the metrics
run under ``shard_map`` on the devices that hold each prompt's hidden states,
spreading the batch over every device when it divides evenly, so only the
small per-prompt results ever cross devices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from geom_jax.models.axes import DATA, MESH_AXES, MODEL  # noqa: F401  (re-exported)


def parse_mesh_shape(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"4,2"`` / ``"4x2"`` / ``(4, 2)`` -> (4, 2); None or "" -> None."""
    if text is None or text == "" or (not isinstance(text, str) and len(text) == 0):
        return None
    parts = text.replace("x", ",").split(",") if isinstance(text, str) else list(text)
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--mesh_shape={text!r}: expected two integers 'DATA,MODEL'") from None
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"--mesh_shape={text!r}: expected two positive integers 'DATA,MODEL'")
    return shape


def make_mesh(
    mesh_shape: Sequence[int] | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A ('data', 'model') mesh; by default every device on ``data``.

    Raises:
      ValueError: when the shape does not use exactly the available devices,
        naming both numbers.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = tuple(mesh_shape) if mesh_shape is not None else (len(devices), 1)
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"--mesh_shape={shape[0]},{shape[1]} needs {math.prod(shape)} devices, "
            f"but {len(devices)} are available"
        )
    axis_types = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def batch_axes(mesh: Mesh, batch_size: int) -> tuple[str, ...]:
    """Mesh axes the metrics spread a batch over: all devices if they divide it."""
    if batch_size % mesh.size == 0:
        return MESH_AXES
    return (DATA,)


def check_batch(mesh: Mesh, batch_size: int) -> None:
    """Raises ValueError unless ``batch_size`` splits over the ``data`` axis."""
    data = mesh.shape[DATA]
    if batch_size % data:
        raise ValueError(
            f"--batch_size={batch_size} is not divisible by the 'data' mesh axis of size {data}"
        )


def place_state(state, mesh: Mesh, rules=None):
    """Moves an NNX state onto ``mesh`` (a no-op for arrays already there),
    placed by :func:`geom_jax.models.partition.state_shardings`, the same
    route from logical axes to shardings as the loader's."""
    from geom_jax.models import partition  # pylint: disable=g-import-not-at-top

    return jax.device_put(state, partition.state_shardings(state, mesh, rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA))


def to_global(mesh: Mesh, local):
    """A global batch array from this process's rows (the batch axis over ``data``)."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local)


def to_host_local(mesh: Mesh, tree):
    """This process's rows of batch-sharded outputs, as NumPy arrays."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    local = multihost_utils.global_array_to_host_local_array(tree, mesh, P(DATA))
    return jax.tree.map(np.asarray, local)
