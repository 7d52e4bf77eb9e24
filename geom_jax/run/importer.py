"""An imported run: representations held outside geom-jax, written as a run folder that
:func:`geom_jax.results.load`, the report and :mod:`geom_jax.run.compare` read as a pooled
run's (:mod:`geom_jax.run.kinds.imported`).

The input is read and checked whole (:mod:`geom_jax.io.external_arrays`: format, shape,
dtype, finite values, the keys' and labels' counts, distinct keys) before anything is
written; then, under the folder's lock, ``representations.zarr`` [N, L, D] (float32, the
hashes of its chunks recorded, as a pooled run's), ``results.npz`` (one cloud: every row),
``tokens.npz`` (the rows), ``RESULTS.md`` and, last, ``metadata.json``, which records the
input (path, format, array names, shape, dtype, SHA-256) under ``imported``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from geom_jax import results
from geom_jax.errors import ArgumentError
from geom_jax.io import external_arrays, files, provenance
from geom_jax.io.representation_store import RepresentationStore
from geom_jax.metrics.declare import registry
from geom_jax.run import lock, output_dir
from geom_jax.run.checks import UserError, wrap
from geom_jax.run.kinds import IMPORTED_RUN, pooled_sweep

CHUNK_BYTES = 64 << 20
"""About this many bytes per chunk of the store (whole rows)."""


def import_representations(
    input: str,  # noqa: A002 (the flag's name)
    output_dir: str,
    *,
    labels: str | None = None,
    keys: str | None = None,
    layers: str | None = None,
    array: str | None = None,
    column: str | None = None,
    position: str | None = None,
    token_mask: str | None = None,
    name: str | None = None,
) -> dict:
    """Writes the imported run of ``input`` into ``output_dir``; returns its metadata.

    Args:
      input: a ``.npy``, ``.npz``, ``.safetensors``, ``.pt`` / ``.pth`` file, a Zarr
        array folder or a saved Hugging Face dataset folder
        (:mod:`geom_jax.io.external_arrays`).
      output_dir: the run folder (new, or empty).
      labels: ``.npy`` [N] or ``.txt`` of one integer class id per row.
      keys: ``.txt`` (one per line) or ``.npy`` [N] of distinct row keys; without, a row's
        key is its index (``"0"``, ``"1"``, ...).
      layers: ``"all"`` (None) or a comma list of the input's hidden states to keep.
      array, column, position, token_mask: which values of the input are read
        (:func:`geom_jax.io.external_arrays.read_stack`).
      name: what the representations are (e.g. the model), for reports; the input's file
        name by default.

    Raises:
      UserError: a bad input, before anything is written, naming the argument.
    """
    t_start = time.time()
    if not output_dir:
        raise UserError("{output_dir} is required", "output_dir")
    try:
        stack = external_arrays.read_stack(
            input, array=array, column=column, position=position, token_mask=token_mask
        )
        values, kept = external_arrays.select_layers(stack, layers)
        n = stack.num_rows
        row_labels = external_arrays.read_labels(labels, n) if labels else None
        row_keys = (
            external_arrays.read_keys(keys, n) if keys else np.asarray([str(i) for i in range(n)])
        )
    except ArgumentError as e:
        raise wrap(e) from None
    _check_output_dir(output_dir)
    record = {
        "path": stack.path,
        "format": stack.format,
        "arrays": list(stack.arrays),
        "shape": stack.shape,
        "dtype": stack.dtype,
        "sha256": external_arrays.input_sha256(stack.path),
        "layers": kept,
        "position": position or ("last" if token_mask else None),
        "token_mask": _file_record(token_mask),
        "keys": _file_record(keys),
        "labels": _file_record(labels),
    }
    os.makedirs(output_dir, exist_ok=True)
    with lock.RunLock(output_dir):
        _check_output_dir(output_dir)
        _write(output_dir, values, row_keys, row_labels)
        meta = {
            "model": name or os.path.basename(os.path.normpath(stack.path)),
            "imported": record,
            "flags": {"pool": IMPORTED_RUN.pools[0]},
            "num_rows": n,
            "num_hidden_states": len(kept),
            "dim": int(values.shape[-1]),
            "class_names": [],
            "versions": provenance.package_versions(),
            "git_commit": provenance.git_commit(),
            "wall_time_s": round(time.time() - t_start, 2),
        }
        files.write_json(os.path.join(output_dir, results.METADATA_FILE), meta)
    return meta


def _check_output_dir(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError("{output_dir}={out!r} exists and is not a folder", "output_dir", out=out)
    if os.path.isdir(out) and output_dir.holds_a_run(out):
        raise UserError(
            "{output_dir}={out!r} already holds files; choose another folder (nothing was "
            "overwritten)",
            "output_dir",
            out=out,
        )


def _file_record(path: str | None) -> dict | None:
    if not path:
        return None
    return {"path": os.path.abspath(path), "sha256": files.file_sha256(path)}


def _write(out: str, values: np.ndarray, keys: np.ndarray, labels: np.ndarray | None) -> None:
    """The store [N, L, D], then results.npz, tokens.npz and RESULTS.md."""
    num_layers, n, dim = values.shape
    chunk = max(1, min(n, CHUNK_BYTES // (num_layers * dim * 4)))
    store = RepresentationStore.open_or_create(
        os.path.join(out, pooled_sweep.STORE), rows=n, layers=num_layers, dim=dim, chunk_rows=chunk
    )
    for start in range(0, n, chunk):
        rows = np.moveaxis(values[:, start : start + chunk], 0, 1)
        store.write_rows(start, np.ascontiguousarray(rows))
    arrays = {
        "cloud_shuffle": np.zeros(1, np.int32),
        "cloud_repeat": np.zeros(1, np.int32),
        "cloud_partition": np.zeros(1, np.int32),
        "n_points": np.asarray([n], np.int32),
        "row_prompt_index": np.arange(n, dtype=np.int64),
        "row_prompt_key": keys,
        "row_shuffle": np.zeros(n, np.int32),
        "row_repeat": np.zeros(n, np.int32),
    }
    if labels is not None:
        arrays["row_label"] = labels
    registry.discover()
    results.save_results(out, arrays, registry.ObservableSet(()), IMPORTED_RUN)
