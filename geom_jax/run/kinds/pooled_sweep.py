"""The compute of a pooled run: the rows stream through the pooling forward
(:class:`geom_jax.pipeline.PooledPipeline`) into ``representations.zarr`` [rows, L+1, D]
(the row losses beside it) chunk by verified chunk, so a kill at any moment resumes exactly;
once every row is in, each cloud's geometry is measured per layer on its points.

On several processes the forward runs in lockstep on the global mesh, each process
supplying its slice of every batch (:mod:`geom_jax.run.distributed`); chunk c is written
and recorded by process c mod P, and process 0 folds the records into the store's
manifest (:meth:`RepresentationStore.merge_records`) when every chunk is in. The geometry
then runs on the global mesh, every process reading the clouds from the store."""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np
from tqdm.auto import tqdm

from geom_jax import pipeline, sharding
from geom_jax.io.representation_store import RepresentationStore
from geom_jax.run import distributed
from geom_jax.run import spec as run_spec
from geom_jax.run.checks import UserError
from geom_jax.run.kinds.pooled_rows import Cloud, Rows, cloud_inputs

STORE = "representations.zarr"
LOSS_STORE = "row_loss.zarr"


def open_stores(out: str, num_rows: int, layers: int, dim: int, chunk_rows: int):
    """The run's two stores: the pooled hidden states and the row losses.

    On several processes, process 0 creates (or opens) them before the others open
    them; each process writes as writer jax.process_index() (the records a killed
    launch left in writers' parts are read as they are, and folded into the manifest
    when the forward ends)."""
    writer = jax.process_index() if jax.process_count() > 1 else None

    def both():
        return tuple(
            RepresentationStore.open_or_create(
                os.path.join(out, name),
                rows=num_rows,
                layers=n,
                dim=d,
                chunk_rows=chunk_rows,
                writer=writer,
            )
            for name, n, d in ((STORE, layers, dim), (LOSS_STORE, 1, 1))
        )

    try:
        stores = None
        if jax.process_index() == 0:
            stores = both()
        distributed.barrier("geom_jax:stores")
        reps, losses = stores if stores is not None else both()
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
    as its batches are done, so a kill loses at most the chunk in progress. On several
    processes every process runs every batch (its slice of the rows), chunk c is written
    by process c mod P, which also verifies it on resume (each chunk hashed once, not
    by every process)."""
    process, processes = jax.process_index(), jax.process_count()
    mine = range(process, reps.num_chunks, processes)
    verified = np.zeros(reps.num_chunks, bool)
    verified[sorted(set(reps.done_chunks(mine)) & set(losses.done_chunks(mine)))] = True
    verified = distributed.agree_on_any(verified)
    done = set(np.flatnonzero(verified).tolist())
    todo = [c for c in range(reps.num_chunks) if c not in done]
    share = batch_size // processes
    bar = tqdm(
        total=len(rows),
        initial=sum(len(range(*reps.chunk_bounds(c))) for c in done),
        unit="row",
        smoothing=0.1,
        mininterval=1.0,
        disable=not progress or process != 0,
    )
    try:
        for c in todo:
            start, stop = reps.chunk_bounds(c)
            out_rep, out_loss = [], []
            for b in range(start, stop, batch_size):
                idx = np.arange(b, min(b + batch_size, stop))
                padded = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])
                slice_ = padded[process * share : (process + 1) * share]
                host = distributed.fetch(pipe(rows.input_ids[slice_], rows.attention_mask[slice_]))
                out_rep.append(np.asarray(host["representation"], np.float32)[: len(idx)])
                out_loss.append(np.asarray(host["loss"], np.float32)[: len(idx)])
                bar.update(len(idx))
            if c % processes == process:
                reps.write_rows(start, np.concatenate(out_rep))
                losses.write_rows(start, np.concatenate(out_loss)[:, None, None])
    finally:
        bar.close()
    distributed.barrier("geom_jax:forward")
    if process == 0:
        reps.merge_records()
        losses.merge_records()
    distributed.barrier("geom_jax:merged")


def cloud_width(clouds: list[Cloud], mesh, options) -> int:
    """Points per measured cloud: the largest cloud's, rounded up to a multiple of the
    mesh's data axis on the ring path (each device then holds an equal share)."""
    n_max = max(len(c.rows) for c in clouds)
    if mesh is None or options.get("neighbour_path") != "ring":
        return n_max
    data = mesh.shape[sharding.DATA]
    return -(-n_max // data) * data


def _mesh(mesh):
    return mesh if mesh is not None and mesh.size > 1 else None


@dataclasses.dataclass(frozen=True)
class CloudGeometry:
    """How a pooled run measures its clouds, made once (:meth:`plan`) for the check
    before the forward and the measurement after it.

    Attributes:
      spec, rows, clouds: the run's spec, rows and clouds.
      mesh: the devices the clouds are measured on (None: one device).
      options: the observables' option values.
      width: points per measured cloud (:func:`cloud_width`).
      inputs: every cloud's per-point inputs [C, width, ...] (the row labels and what the
        observables derive from them on the host: ``pooled_rows.cloud_inputs``).
    """

    spec: run_spec.RunSpec
    rows: Rows
    clouds: list[Cloud]
    mesh: object
    options: dict
    width: int
    inputs: dict

    @classmethod
    def plan(cls, spec, rows: Rows, clouds: list[Cloud], mesh=None) -> CloudGeometry:
        mesh = _mesh(mesh)
        options = spec.observable_set.options(spec.option_values())
        width = cloud_width(clouds, mesh, options)
        inputs = cloud_inputs(spec, rows, clouds, width=width)
        return cls(spec, rows, clouds, mesh, options, width, inputs)

    @property
    def ring(self) -> bool:
        return self.mesh is not None and self.options.get("neighbour_path") == "ring"

    @functools.cached_property
    def _fn(self):
        return jax.jit(
            lambda h, m, i: pipeline.cloud_geometry(
                h,
                m,
                i,
                observables=self.spec.observable_set,
                layer_chunk=self.spec.layer_chunk,
                options=self.options,
                mesh=self.mesh,
            )
        )

    def check(self, layers: int, dim: int) -> None:
        """Traces the geometry (no compute) before the forward, so that an observable the
        neighbour path cannot measure (e.g. tle_id on the ring) is refused before any row
        is run."""
        try:
            jax.eval_shape(
                self._fn,
                jax.ShapeDtypeStruct((layers, 1, self.width, dim), np.float32),
                jax.ShapeDtypeStruct((1, self.width), np.bool_),
                {
                    k: jax.ShapeDtypeStruct((1,) + v.shape[1:], v.dtype)
                    for k, v in self.inputs.items()
                },
            )
        except ValueError as e:
            names = ("observables", "neighbour_path")
            about = "{observables} with {neighbour_path}={path!r}"
            if not str(e).startswith("observable "):
                names, about = "neighbour_path", "{neighbour_path}={path!r}"
            raise UserError(
                about + ": {problem}",
                names,
                path=self.options.get("neighbour_path"),
                problem=str(e),
            ) from None

    def measure(self, reps, written: set[str], progress: bool, per_row=None):
        """Each cloud's observables per layer, on its points read from the store: the
        fields ``written`` [C, L', ...] (finite and status [C, L] among them), and the
        per-point fields ``per_row`` (their declarations, dims with "token") as
        [R, L', ...], each row's value from its cloud (every row is in one cloud; NaN, or
        -2 for integers, at a row no cloud holds). On a mesh of several devices (of one
        process or several), each cloud is a global array that every process fills for
        its own devices from the store: replicated, each cloud's rows split over the data
        axis (the row-blocked path), or, on the ring path, its points split over that
        axis, so that a process reads only its devices' rows."""
        per_row = list(per_row or ())
        per_cloud, row_values = [], {}
        for i, cloud in enumerate(
            tqdm(self.clouds, unit="cloud", disable=not progress, desc="cloud geometry")
        ):
            n = len(cloud.rows)
            mask = np.zeros((1, self.width), bool)
            mask[0, :n] = True
            inputs = {k: v[i : i + 1] for k, v in self.inputs.items()}
            shape = (reps.layers, 1, self.width, reps.dim)
            if self.mesh is None:
                hidden, args = _points(reps, cloud, shape), (mask, inputs)
            elif self.ring:
                split = jax.sharding.PartitionSpec(None, None, sharding.DATA, None)
                hidden = jax.make_array_from_callback(
                    shape,
                    jax.sharding.NamedSharding(self.mesh, split),
                    lambda index, cloud=cloud, shape=shape: _points(reps, cloud, shape, index[2]),
                )
                args = _replicated(self.mesh, (mask, inputs))
            else:
                hidden, args = _replicated(self.mesh, (_points(reps, cloud, shape), (mask, inputs)))
            geo = distributed.fetch(dict(self._fn(hidden, *args)))
            per_cloud.append({k: np.asarray(v)[0] for k, v in geo.items() if k in written})
            for field in per_row:
                axis = bool(field.layers) + field.dims.index("token")
                point_major = np.moveaxis(np.asarray(geo[field.name])[0], axis, 0)[:n]
                if field.name not in row_values:
                    row_values[field.name] = np.full(
                        (len(self.rows),) + point_major.shape[1:], _missing(field), field.dtype
                    )
                row_values[field.name][cloud.rows] = point_major
        cloud_values = {k: np.stack([g[k] for g in per_cloud]) for k in per_cloud[0]}
        return cloud_values, row_values


def _points(reps, cloud: Cloud, shape, points=slice(None)) -> np.ndarray:
    """The cloud's points [L+1, 1, points, D] read from the store (zero rows past its
    last point): ``points`` a slice of the padded cloud."""
    start, stop, _ = points.indices(shape[2])
    out = np.zeros((shape[0], 1, stop - start, shape[3]), np.float32)
    mine = cloud.rows[start:stop]
    if len(mine):
        out[:, 0, : len(mine)] = np.moveaxis(reps.read(mine), 0, 1)
    return out


def _replicated(mesh, tree):
    """Host arrays as global arrays replicated on every device of ``mesh``: one program
    whether the mesh's devices are in one process or several (each process fills its own
    devices from its copy)."""
    sharding_ = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(
        lambda a: jax.make_array_from_callback(a.shape, sharding_, lambda index: a[index]), tree
    )


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
