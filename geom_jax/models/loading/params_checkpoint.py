"""Converted parameters saved as an orbax checkpoint, so that later loads
(every host of a pod, every run of a sweep) restore them straight into their
shardings instead of converting the source checkpoint again.

Folder layout:

    <folder>/params/               orbax StandardCheckpointer directory of the
                                   parameters (the `nnx.to_pure_dict` tree)
    <folder>/geom_jax_params.json  what they were converted from: format,
                                   checkpoint_id, config, param_dtype

The JSON is written last (atomically, by process 0), so its presence marks a
complete save; a folder without it is (re)written.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import SingleDeviceSharding

from ..config import DecoderConfig
from ..partition import param_axes

RECORD = "geom_jax_params.json"
PARAMS = "params"
FORMAT = 1
_LABELS = ("name", "checkpoint_id")


class ParamsCheckpointMismatchError(ValueError):
    """The params checkpoint was converted from another model, config or dtype."""


def record(cfg: DecoderConfig, param_dtype) -> dict[str, Any]:
    """What a params checkpoint must match (the config minus its `name` label)."""
    config = {k: v for k, v in cfg.to_dict().items() if k not in _LABELS}
    out = dict(
        format=FORMAT,
        checkpoint_id=cfg.checkpoint_id,
        config=config,
        param_dtype=jnp.dtype(param_dtype).name,
    )
    return json.loads(json.dumps(out))


def exists(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, RECORD))


def _differences(saved: dict, wanted: dict) -> list[str]:
    out = []
    for key in ("format", "checkpoint_id", "param_dtype"):
        if saved.get(key) != wanted[key]:
            out.append(f"{key} {saved.get(key)!r} (this load: {wanted[key]!r})")
    saved_cfg = saved.get("config") or {}
    for key, value in wanted["config"].items():
        if saved_cfg.get(key) != value:
            out.append(f"config.{key} {saved_cfg.get(key)!r} (this load: {value!r})")
    return out


def check(folder: str, cfg: DecoderConfig, param_dtype) -> None:
    """Raises ParamsCheckpointMismatchError listing what differs."""
    with open(os.path.join(folder, RECORD)) as f:
        saved = json.load(f)
    diff = _differences(saved, record(cfg, param_dtype))
    if diff:
        raise ParamsCheckpointMismatchError(
            f"params checkpoint {folder} was converted from another model or setting: "
            + "; ".join(diff)
            + ". Pass another params_checkpoint folder, or delete this one to convert again."
        )


def _checkpointer():
    return ocp.StandardCheckpointer()


def save(folder: str, params: dict, cfg: DecoderConfig, param_dtype) -> None:
    """Writes `params` (sharded or not) and then the record; collective over
    processes, like any orbax save."""
    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    checkpointer = _checkpointer()
    checkpointer.save(os.path.join(folder, PARAMS), params, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()
    if jax.process_index() == 0:
        tmp = os.path.join(folder, RECORD + ".tmp")
        with open(tmp, "w") as f:
            json.dump(record(cfg, param_dtype), f, indent=1)
        os.replace(tmp, os.path.join(folder, RECORD))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("geom_jax params checkpoint saved")


def _target(cfg: DecoderConfig, param_dtype, shardings: dict | None) -> dict:
    default = SingleDeviceSharding(jax.local_devices()[0])
    return traverse_util.unflatten_dict(
        {
            path: jax.ShapeDtypeStruct(
                p.shape,
                jnp.dtype(param_dtype),
                sharding=shardings[path] if shardings is not None else default,
            )
            for path, p in param_axes(cfg).items()
        }
    )


def restore(folder: str, cfg: DecoderConfig, param_dtype, shardings: dict | None = None) -> dict:
    """The saved parameters placed by `shardings` (path -> Sharding), or on
    the first local device when None; refuses a mismatched checkpoint."""
    folder = os.path.abspath(folder)
    check(folder, cfg, param_dtype)
    checkpointer = _checkpointer()
    try:
        return checkpointer.restore(
            os.path.join(folder, PARAMS), _target(cfg, param_dtype, shardings)
        )
    finally:
        checkpointer.close()
