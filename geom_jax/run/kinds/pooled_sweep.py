"""The compute of a pooled run: the rows stream through the pooling forward
(:class:`geom_jax.pipeline.PooledPipeline`) into ``representations.zarr`` [rows, L+1, D]
(the row losses beside it) chunk by verified chunk, so a kill at any moment resumes exactly;
once every row is in, each cloud's geometry is measured per layer on its points."""

from __future__ import annotations

import os

import jax
import numpy as np
from tqdm.auto import tqdm

from geom_jax import pipeline
from geom_jax.io.representation_store import RepresentationStore
from geom_jax.run import spec as run_spec
from geom_jax.run.checks import UserError
from geom_jax.run.kinds.pooled_rows import Cloud, Rows, cloud_inputs

STORE = "representations.zarr"
LOSS_STORE = "row_loss.zarr"


def open_stores(out: str, num_rows: int, layers: int, dim: int, chunk_rows: int):
    """The run's two stores: the pooled hidden states and the row losses."""
    try:
        reps = RepresentationStore.open_or_create(
            os.path.join(out, STORE), rows=num_rows, layers=layers, dim=dim, chunk_rows=chunk_rows
        )
        losses = RepresentationStore.open_or_create(
            os.path.join(out, LOSS_STORE), rows=num_rows, layers=1, dim=1, chunk_rows=chunk_rows
        )
    except ValueError as e:
        raise UserError(
            "{problem} ({output_dir} holds a run with other rows: pass another "
            "{output_dir} or the same settings)",
            "output_dir",
            problem=str(e),
        ) from None
    return reps, losses


def pooled_sweep(pipe, rows: Rows, reps, losses, *, batch_size: int, progress: bool) -> None:
    """Every chunk of rows not already verified in both stores: forward, pool, write.

    A chunk is written (representations, then losses) and its hashes recorded as soon
    as its batches are done, so a kill loses at most the chunk in progress."""
    done = set(reps.done_chunks()) & set(losses.done_chunks())
    todo = [c for c in range(reps.num_chunks) if c not in done]
    bar = tqdm(
        total=len(rows),
        initial=sum(len(range(*reps.chunk_bounds(c))) for c in done),
        unit="row",
        smoothing=0.1,
        mininterval=1.0,
        disable=not progress,
    )
    try:
        for c in todo:
            start, stop = reps.chunk_bounds(c)
            out_rep, out_loss = [], []
            for b in range(start, stop, batch_size):
                idx = np.arange(b, min(b + batch_size, stop))
                padded = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])
                host = pipe.to_host(pipe(rows.input_ids[padded], rows.attention_mask[padded]))
                out_rep.append(np.asarray(host["representation"], np.float32)[: len(idx)])
                out_loss.append(np.asarray(host["loss"], np.float32)[: len(idx)])
                bar.update(len(idx))
            reps.write_rows(start, np.concatenate(out_rep))
            losses.write_rows(start, np.concatenate(out_loss)[:, None, None])
    finally:
        bar.close()


def measure(
    spec: run_spec.RunSpec,
    reps,
    rows: Rows,
    clouds: list[Cloud],
    written: set[str],
    progress: bool,
    mesh=None,
    per_row=None,
):
    """Each cloud's observables per layer, on its points read from the store: the fields
    ``written`` [C, L', ...] (finite and status [C, L] among them), and the per-point
    fields ``per_row`` (their declarations, dims with "token") as [R, L', ...], each
    row's value from its cloud (every row is in one cloud; NaN, or -2 for integers, at a
    row no cloud holds). The per-point inputs (labels, and what observables derive from
    them on the host) are made for every cloud before the jitted geometry
    (``pooled_rows.cloud_inputs``). On a mesh of several devices, each cloud's rows are
    split over its data axis (the row-blocked path)."""
    per_row = list(per_row or ())
    mesh = mesh if mesh is not None and mesh.size > 1 else None
    observables = spec.observable_set
    options = observables.options(spec.option_values())
    n_max = max(len(c.rows) for c in clouds)
    point_inputs = cloud_inputs(spec, rows, clouds)
    per_cloud, row_values = [], {}
    geometry = jax.jit(
        lambda h, m, i: pipeline.cloud_geometry(
            h,
            m,
            i,
            observables=observables,
            layer_chunk=spec.layer_chunk,
            options=options,
            mesh=mesh,
        )
    )
    for i, cloud in enumerate(
        tqdm(clouds, unit="cloud", disable=not progress, desc="cloud geometry")
    ):
        points = reps.read(cloud.rows)  # [n, L+1, D]
        n = len(cloud.rows)
        hidden = np.zeros((points.shape[1], 1, n_max, points.shape[2]), np.float32)
        hidden[:, 0, :n] = np.moveaxis(points, 0, 1)
        mask = np.zeros((1, n_max), bool)
        mask[0, :n] = True
        geo = geometry(hidden, mask, {k: v[i : i + 1] for k, v in point_inputs.items()})
        per_cloud.append({k: np.asarray(v)[0] for k, v in geo.items() if k in written})
        for field in per_row:
            axis = bool(field.layers) + field.dims.index("token")
            point_major = np.moveaxis(np.asarray(geo[field.name])[0], axis, 0)[:n]
            if field.name not in row_values:
                row_values[field.name] = np.full(
                    (len(rows),) + point_major.shape[1:], _missing(field), field.dtype
                )
            row_values[field.name][cloud.rows] = point_major
    cloud_values = {k: np.stack([g[k] for g in per_cloud]) for k in per_cloud[0]}
    return cloud_values, row_values


def _missing(field):
    return np.nan if np.dtype(field.dtype).kind == "f" else -2


def row_arrays(rows: Rows, losses) -> dict[str, np.ndarray]:
    """The per-row fields of tokens.npz."""
    out = {
        "input_ids": rows.input_ids,
        "attention_mask": rows.attention_mask,
        "row_prompt_index": rows.prompt_index,
        "row_prompt_key": rows.prompt_key,
        "row_shuffle": rows.shuffle,
        "row_repeat": rows.repeat,
        "row_loss": losses.read()[:, 0, 0],
    }
    if rows.label is not None:
        out["row_label"] = rows.label
    return out
