"""``metadata.json``: what produced a run's results (model, data, flags, code, machine, time)."""

from __future__ import annotations

import dataclasses
import socket

import jax

from geom_jax.io import provenance
from geom_jax.models.loading import hub


def metadata(spec, model, source, mesh, *, num_rows: int, wall_s: float, compute_s: float) -> dict:
    """The record of a finished run: its model and checkpoint, dataset, defining
    flags, mesh, execution dtypes, package versions, git commit, device and times."""
    return {
        "model": spec.model,
        "checkpoint": model.config.checkpoint_id,
        "revision": spec.revision or None,
        "commit": hub.commit_in(model.config.checkpoint_id),
        "model_config": dataclasses.asdict(model.config),
        "dataset": source.describe(),
        "flags": spec.defining(),
        "mesh_shape": list(mesh.devices.shape),
        "num_processes": jax.process_count(),
        "num_rows": num_rows,
        "execution_dtypes": {"compute": str(model.dtype), "params": str(model.param_dtype)},
        "versions": provenance.package_versions(),
        "git_commit": provenance.git_commit(),
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "num_devices": jax.device_count(),
        "host": socket.gethostname(),
        "wall_time_s": round(wall_s, 2),
        "compute_time_s": round(compute_s, 2),
    }
