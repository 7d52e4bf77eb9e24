"""Multi-process sweeps on JAX's distributed runtime.

Every process runs the same jitted step on a global mesh (SPMD, in lockstep)
and supplies its own slice of each global batch: rows ``i * B + p * b ...
i * B + (p + 1) * b - 1`` of global batch ``i`` for process ``p`` (``b = B /
processes``). Each process writes its share of every checkpoint (one
collective orbax save, see :class:`geom_jax.sweep.Checkpointer`, on a
folder all processes share); at the end the shares are gathered with a
collective and process 0 writes the merged results. On resume the processes
agree on the last batch all of them finished, so the lockstep order, and
hence every result, is unchanged.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from geom_jax.errors import ArgumentError, value_error


class DistributedError(ArgumentError):
    """Inconsistent multi-process arguments."""


AUTO_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Starts ``jax.distributed`` from flags, or from the platform when it is a
    SLURM job or a TPU pod; returns whether a multi-process runtime is up.

    Must run before any other JAX call. CPU processes talk through gloo.
    """
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise DistributedError(
                "{coordinator_address} needs {num_processes} and {process_id} as well",
                ("coordinator_address", "num_processes", "process_id"),
            )
        if not 0 <= process_id < num_processes:
            raise DistributedError(
                "{process_id}={value} is outside 0..{last}",
                "process_id",
                value=process_id,
                last=num_processes - 1,
            )
        if "cpu" in os.environ.get("JAX_PLATFORMS", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif any(os.environ.get(k) for k in AUTO_ENV):
        jax.distributed.initialize()
    else:
        return False
    logging.info(
        "Process %d of %d, %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return jax.process_count() > 1


def check_batch(global_batch: int, num_processes: int) -> None:
    """Each process supplies the same number of rows of every batch."""
    if global_batch % num_processes:
        raise value_error(
            "batch_size", global_batch, f"is not divisible by the {num_processes} processes"
        )


def local_rows(num_rows: int, global_batch: int, process: int, num_processes: int) -> np.ndarray:
    """Global row ids this process supplies, batch after batch.

    Every process gets the same number of rows, ``ceil(num_rows / B) * b``;
    slots past the end repeat the last row (their results are dropped).
    """
    check_batch(global_batch, num_processes)
    b = global_batch // num_processes
    num_batches = -(-num_rows // global_batch)
    ids = (
        np.arange(num_batches)[:, None] * global_batch + process * b + np.arange(b)[None, :]
    ).reshape(-1)
    return np.minimum(ids, num_rows - 1)


def agree_on_min(value: int) -> int:
    """The minimum of ``value`` over all processes."""
    if jax.process_count() == 1:
        return value
    return int(np.min(multihost_utils.process_allgather(np.asarray([value], np.int64))))


def agree_on_any(flags: np.ndarray) -> np.ndarray:
    """Bool flags true on some process (elementwise)."""
    flags = np.asarray(flags, bool)
    if jax.process_count() == 1:
        return flags
    every = multihost_utils.process_allgather(flags.astype(np.int8)[None], tiled=True)
    return np.any(np.asarray(every, bool), axis=0)


def fetch(tree) -> dict:
    """The whole value of global arrays (every process's rows) on every process, as NumPy."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def gather_rows(num_rows: int, rows: np.ndarray, arrays: dict[str, np.ndarray]) -> dict:
    """Merges every process's ``arrays`` (indexed by its global ``rows``)."""
    if jax.process_count() > 1:
        rows = np.asarray(multihost_utils.process_allgather(rows, tiled=True))
        arrays = {
            k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
            for k, v in arrays.items()
        }
    merged = {}
    for name, value in arrays.items():
        out = np.empty((num_rows, *value.shape[1:]), value.dtype)
        out[rows] = value
        merged[name] = out
    return merged


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
