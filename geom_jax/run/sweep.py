"""Resumable sweeps: stream batches through a step, checkpoint, write results.

A sweep is a fixed, ordered list of rows (prompt x shuffle index). Rows are
cut into batches of static shape (the last one padded by repeating a row), so
every batch compiles once and the output of a row does not depend on where a
run was interrupted. While the device works on batch i, a host thread
builds batch i+1 and the results of batch i-1 are copied back; every few
batches the filled result arrays are saved with orbax-checkpoint (atomic:
written to a temporary folder, then renamed), so ``kill -9`` at any moment
loses at most the batches since the last save and never corrupts one. Every
saved step carries the SHA-256 of its files; on resume a step that fails the
check or cannot be read is reported and the newest valid one is used, so
results are only assembled from verified rows.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging as std_logging
import os
import shutil
import signal
import threading
from collections.abc import Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh, NamedSharding
from tqdm.auto import tqdm

from geom_jax import sharding
from geom_jax.errors import ArgumentError, value_error
from geom_jax.io import integrity
from geom_jax.models.axes import PROCESS_ROWS, PROCESSES
from geom_jax.run import disk_space

CHECKPOINT_DIR = "checkpoints"


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """The rows of a sweep.

    Attributes:
      prompt_index: [P] source index of each row's prompt.
      shuffle_index: [P] shuffle level s of each row.
      make_batch: builds (input_ids [b, T] int32, attention_mask [b, T]) for
        the given row numbers; called on a host thread.
      shuffle_repeat: [P] repeat r of the row's shuffle (None: all 0).
    """

    prompt_index: np.ndarray
    shuffle_index: np.ndarray
    make_batch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    shuffle_repeat: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prompt_index)


class ResultStore:
    """Host arrays [P, ...] for every result field, in the step's dtypes (``done`` says
    which rows are computed; the others hold zeros)."""

    def __init__(self, num_rows: int, shapes: Mapping[str, jax.ShapeDtypeStruct]):
        self.arrays = {
            name: np.zeros((num_rows, *s.shape[1:]), s.dtype) for name, s in shapes.items()
        }
        self.done = np.zeros(num_rows, bool)

    def put(self, rows: np.ndarray, batch: Mapping[str, np.ndarray]) -> None:
        for name, value in batch.items():
            self.arrays[name][rows] = value[: len(rows)]
        self.done[rows] = True

    def state(self) -> dict:
        return {"done": self.done.copy(), **{k: v.copy() for k, v in self.arrays.items()}}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        for name, value in state.items():
            target = self.done if name == "done" else self.arrays.get(name)
            if target is None or target.shape != value.shape:
                raise ArgumentError(
                    "{resume}: checkpoint field {name!r} has shape {shape}, this run expects "
                    "{expected}; the checkpoint was written by a run with other settings",
                    "resume",
                    name=name,
                    shape=np.shape(value),
                    expected=None if target is None else target.shape,
                )
            target[...] = value


def _quiet_orbax(record) -> bool:
    """Drops orbax's info logs, and its tracebacks of a full disk or of a Ctrl-C
    that reached its save thread (the run reports either in one line)."""
    if "orbax" not in record.pathname:
        return True
    if record.levelno < std_logging.WARNING:
        return False
    exc = record.exc_info[1] if record.exc_info else None
    return not (
        isinstance(exc, KeyboardInterrupt)
        or disk_space.is_disk_full(RuntimeError(record.getMessage()))
        or (exc is not None and disk_space.is_disk_full(exc))
    )


@contextlib.contextmanager
def deferred_interrupt():
    """Holds a Ctrl-C (SIGINT) that arrives inside the block and raises it as
    KeyboardInterrupt once the block is done.

    A KeyboardInterrupt raised while orbax saves (its commit runs on other
    threads, which the main thread waits for) left the run hanging in that wait
    or let orbax swallow it and run on; deferring it to the end of the save
    commits the step, then stops. Outside the main thread (only the main thread
    receives signals) and where SIGINT is ignored (a background job) it does
    nothing.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    ):
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if received:
        raise KeyboardInterrupt


class Checkpointer:
    """Saves and restores a :class:`ResultStore` with orbax-checkpoint.

    In a multi-process run every process holds the rows it computed; the
    checkpoint is one collective orbax save in which each process writes its
    own rows as its shard of global arrays ``[processes * rows, ...]``, and
    which orbax commits only once all processes have written. A kill of any
    process therefore leaves the previous step as the latest complete one,
    the same for everyone.

    Each committed step then gets a manifest of its files' SHA-256
    (:mod:`geom_jax.checkpoint_integrity`). :meth:`restore` loads the newest
    step that matches its manifest and can be read; a newer step that does
    not (random bytes, truncation, a kill before the manifest) is reported
    in one line naming the step and the file, and removed.
    """

    def __init__(self, directory: str, notice: Callable[[str], None] | None = None):
        handler = logging.get_absl_handler()
        if _quiet_orbax not in handler.filters:
            handler.addFilter(_quiet_orbax)
        self.directory = os.path.abspath(directory)
        self._notice = notice or logging.warning
        self.rejected: list[tuple[int, str]] = []
        self.manager = None

    def steps(self) -> list[int]:
        """Committed steps on disk, newest first."""
        if not os.path.isdir(self.directory):
            return []
        names = os.listdir(self.directory)
        return sorted(
            (int(n) for n in names if n.isdigit() and os.path.isdir(self._folder(int(n)))),
            reverse=True,
        )

    def _folder(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def restore(self, store: ResultStore) -> int:
        """Loads the newest verified checkpoint into ``store``; returns its step or -1."""
        template = jax.tree.map(_abstract, _to_global(store.state()))
        steps = self.steps()
        for i, step in enumerate(steps):
            folder = self._folder(step)
            problem = integrity.manifest_problem(folder)
            if problem is None:
                try:
                    restored = ocp.StandardCheckpointer().restore(
                        os.path.join(folder, "default"), template
                    )
                except Exception as e:
                    problem = f"it cannot be read ({type(e).__name__}: {_first_line(e)})"
                else:
                    store.load_state({k: _to_local(v) for k, v in restored.items()})
                    return step
            fallback = f"checkpoint {steps[i + 1]}" if i + 1 < len(steps) else "scratch"
            self._notice(
                f"checkpoint {step} in {self.directory} is damaged: {problem}; "
                f"removed it, falling back to {fallback}"
            )
            self.rejected.append((step, problem))
            if jax.process_index() == 0:
                shutil.rmtree(folder, ignore_errors=True)
        return -1

    def save(self, step: int, store: ResultStore) -> None:
        """Commits ``step`` and its manifest; a Ctrl-C meanwhile is raised after both."""
        with deferred_interrupt():
            if self.manager is None:
                self.manager = ocp.CheckpointManager(
                    self.directory,
                    options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
                )
            self.manager.save(step, args=ocp.args.StandardSave(_to_global(store.state())))
            self.manager.wait_until_finished()
            if jax.process_index() == 0:
                integrity.write_manifest(self._folder(step))

    def close(self) -> None:
        if self.manager is not None:
            self.manager.wait_until_finished()
            self.manager.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def _process_sharding():
    """Sharding of a global array whose i-th block of rows lives on process i."""
    first = {}
    for d in sorted(jax.devices(), key=lambda d: (d.process_index, d.id)):
        first.setdefault(d.process_index, d)
    mesh = Mesh(np.asarray([first[p] for p in sorted(first)]), (PROCESSES,))
    return NamedSharding(mesh, sharding.spec(PROCESS_ROWS))


def _to_global(state: dict) -> dict:
    if jax.process_count() == 1:
        return state
    sharding = _process_sharding()
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in state.items()}


def _abstract(x):
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x


def _to_local(x) -> np.ndarray:
    if jax.process_count() == 1 or not isinstance(x, jax.Array):
        return np.asarray(x)
    return np.asarray(x.addressable_shards[0].data)


def _batches(todo: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]


def _pad_rows(rows: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])


def run_sweep(
    plan: SweepPlan,
    step: Callable[[np.ndarray, np.ndarray], object],
    *,
    batch_size: int,
    checkpoint_dir: str,
    resume: bool,
    checkpoint_every: int = 4,
    progress: bool = True,
    shapes: Mapping[str, jax.ShapeDtypeStruct] | None = None,
    to_host: Callable = jax.device_get,
    agree_on_start: Callable[[int], int] | None = None,
) -> ResultStore:
    """Runs ``step`` over every row of ``plan`` not already checkpointed.

    Args:
      plan: the rows (of this process, in a multi-process run).
      step: (input_ids, attention_mask) -> a flax/chex dataclass or dict of
        arrays with leading axis ``batch_size``, dispatched asynchronously.
      batch_size: static batch size of ``step``.
      checkpoint_dir: orbax folder of this sweep.
      resume: continue from the latest checkpoint in ``checkpoint_dir``.
      checkpoint_every: save after this many batches.
      progress: show a tqdm bar with prompts/s and ETA.
      shapes: per-field output shapes of ``step`` (leading axis the batch);
        by default found with ``jax.eval_shape`` on the first batch.
      to_host: copies a step's output to NumPy (this process's rows).
      agree_on_start: in multi-process runs, maps the number of batches this
        process has finished to the number every process resumes after (the
        minimum), so that all processes run the same steps in lockstep.

    Returns:
      The filled result store.
    """
    if batch_size < 1:
        raise value_error("batch_size", batch_size, "must be positive")
    if shapes is None:
        ids0, mask0 = plan.make_batch(_pad_rows(np.arange(min(1, len(plan))), batch_size))
        shapes = _as_dict(jax.eval_shape(step, ids0, mask0))
    store = ResultStore(len(plan), shapes)
    ckpt = Checkpointer(checkpoint_dir)
    start_step = ckpt.restore(store) if resume else -1
    batches = _batches(np.arange(len(plan)), batch_size)
    finished = next(
        (i for i, rows in enumerate(batches) if not store.done[rows].all()), len(batches)
    )
    if agree_on_start is not None:
        finished = agree_on_start(finished)
    for rows in batches[finished:]:
        store.done[rows] = False
    batches = batches[finished:]
    if start_step >= 0:
        logging.info(
            "Resumed from checkpoint %d: %d of %d rows done",
            start_step,
            store.done.sum(),
            len(plan),
        )
    bar = _progress_bar(len(plan), int(store.done.sum()), progress)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    save_step = max(start_step, 0)
    pending = None
    try:
        next_batch = (
            pool.submit(plan.make_batch, _pad_rows(batches[0], batch_size)) if batches else None
        )
        for i, rows in enumerate(batches):
            ids, mask = next_batch.result()
            if i + 1 < len(batches):
                next_batch = pool.submit(plan.make_batch, _pad_rows(batches[i + 1], batch_size))
            out = step(ids, mask)
            if pending is not None:
                _collect(store, *pending, bar, to_host)
            pending = (rows, out)
            if (i + 1) % checkpoint_every == 0:
                _collect(store, *pending, bar, to_host)
                pending = None
                save_step += 1
                ckpt.save(save_step, store)
        if pending is not None:
            _collect(store, *pending, bar, to_host)
        if batches:
            ckpt.save(save_step + 1, store)
    finally:
        pool.shutdown(wait=False)
        ckpt.close()
        bar.close()
    if not store.done.all():
        raise RuntimeError(
            f"sweep ended with {int((~store.done).sum())} of {len(plan)} rows not computed"
        )
    return store


def _as_dict(tree) -> dict:
    if isinstance(tree, Mapping):
        return dict(tree)
    return {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}


def _collect(store: ResultStore, rows: np.ndarray, out, bar, to_host) -> None:
    host = {k: np.asarray(v) for k, v in _as_dict(to_host(out)).items()}
    store.put(rows, host)
    bar.update(len(rows))


class _NoBar:
    def update(self, n):
        del n

    def close(self):
        pass


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    return tqdm(total=total, initial=initial, unit="prompt", smoothing=0.1, mininterval=1.0)
