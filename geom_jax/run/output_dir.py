"""A run's output folder: never overwritten, checked writable, locked, and big enough."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from geom_jax.errors import ArgumentError
from geom_jax.io import files
from geom_jax.run import disk_space, lock
from geom_jax.run import spec as run_spec
from geom_jax.run.checks import UserError
from geom_jax.run.file_names import RUN_CONFIG_FILE
from geom_jax.run.sweep import CHECKPOINT_DIR

PROBE_PREFIX = ".write-test-"


def holds_a_run(out: str) -> bool:
    """Whether ``out`` holds more than a run leaves before its first checkpoint
    (its run_config.json, lock, an empty checkpoints folder): such a folder is
    reusable by a fresh run."""
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if name.startswith(PROBE_PREFIX) or name in (lock.LOCK_FILE, RUN_CONFIG_FILE):
            continue
        if name == CHECKPOINT_DIR and os.path.isdir(path):
            if not any(n.isdigit() for n in os.listdir(path)):
                continue
        return True
    return False


def check_output_dir(spec: run_spec.RunSpec) -> None:
    """Refuses to overwrite a run; on resume, checks the run is the same one.

    Creates the folder (empty) to prove it is writable; the run's files are
    written only once every input has been checked.
    """
    out = spec.output_dir
    if not out:
        raise UserError("{output_dir} is required", "output_dir")
    config_path = os.path.join(out, RUN_CONFIG_FILE)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError("{output_dir}={out!r} exists and is not a folder", "output_dir", out=out)
    existing = os.path.isdir(out) and holds_a_run(out)
    if existing and not spec.resume:
        raise UserError(
            "{output_dir}={out!r} already holds files; pass {resume} to continue that run, "
            "or choose another folder (nothing was overwritten)",
            ("output_dir", "resume"),
            out=out,
        )
    if existing and spec.resume and os.path.isfile(config_path):
        saved = files.read_json(config_path)
        diff = {
            k: (run_spec.saved_value(k, saved), v)
            for k, v in spec.defining().items()
            if run_spec.saved_value(k, saved) != v
        }
        if diff:
            names = tuple(sorted(diff))
            changes = ArgumentError(
                ", ".join(f"{{{k}}}={{old{i}!r}} (now {{new{i}!r}})" for i, k in enumerate(names)),
                names,
                **{f"old{i}": diff[k][0] for i, k in enumerate(names)},
                **{f"new{i}": diff[k][1] for i, k in enumerate(names)},
            )
            raise UserError(
                "{resume}: the run in {out!r} used other settings {changes}",
                "resume",
                out=out,
                changes=changes,
            )
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f"{PROBE_PREFIX}{os.getpid()}")
        with open(probe, "w") as fh:
            fh.write("ok")
        os.unlink(probe)
    except OSError as e:
        raise UserError(
            "{output_dir}={out!r} is not writable: {why}", "output_dir", out=out, why=e.strerror
        ) from None


def record_run_config(spec: run_spec.RunSpec) -> None:
    """Writes run_config.json (on resume of a started run it already matches)."""
    files.write_json(os.path.join(spec.output_dir, RUN_CONFIG_FILE), spec.defining())


@dataclasses.dataclass
class SpaceNeeded:
    """Bytes a run writes to its folder: two checkpoints of the result arrays, the
    one being saved, and results.npz (known once the model is)."""

    bytes: int = 1 << 20

    def set_from(self, shapes, num_rows: int) -> None:
        per_row = sum(int(np.prod(s.shape[1:])) * 4 for s in shapes.values()) + 1
        self.bytes = 4 * num_rows * per_row + (1 << 20)


def check_free_space(out: str, needed: int, checkpoint_dir: str) -> None:
    """Refuses to start a computation whose results cannot fit on the disk (a resumed
    run needs only the space it does not already use)."""
    used = 0
    for root, _, names in os.walk(checkpoint_dir):
        used += sum(os.path.getsize(os.path.join(root, f)) for f in names)
    if disk_space.free_bytes(out) + used < needed:
        raise UserError("{problem}", problem=disk_space.full_disk_error(out, needed))
