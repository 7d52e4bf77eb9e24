"""One run, from its spec to its result files.

:func:`run` checks everything it can before any compute (fields, model, dataset,
lengths, output folder), then hands the work to the run's kind
(:mod:`geom_jax.run.kinds`: per-prompt or pooled), which selects its rows, streams them
through the model with checkpoints and measures them; the runner holds the folder's
lock and writes ``results.npz``, ``tokens.npz``, ``RESULTS.md`` and ``metadata.json``.
"""

from __future__ import annotations

import os
import time

import jax
from absl import logging

from geom_jax import models, results, sharding
from geom_jax.run import checks, compilation, distributed, health, lock, output_dir
from geom_jax.run import metadata as run_metadata
from geom_jax.run import spec as run_spec
from geom_jax.run.checks import UserError
from geom_jax.run.disk_space import full_disk_error, is_disk_full
from geom_jax.run.kinds.per_prompt import select
from geom_jax.run.model import load_model


def run(spec: run_spec.RunSpec) -> dict:
    """Runs the experiment; returns the arrays written to ``results.npz``.

    In a multi-process run (``jax.distributed`` initialised), every process
    calls this with the same spec; process 0 writes the merged results.

    Raises:
      UserError: a bad input, before any compute, naming the fields.
    """
    t_start = time.time()
    compilation.enable(spec.compilation_cache)
    clock = compilation.CompileClock()
    checks.check_spec(spec)
    kind = spec.kind
    spec = kind.check(spec)
    try:
        mesh = sharding.make_mesh(sharding.parse_mesh_shape(spec.mesh_shape))
        sharding.check_batch(mesh, spec.batch_size)
        distributed.check_batch(spec.batch_size, jax.process_count())
        models.resolve(spec.model)
        for m in spec.filter_models + ((spec.window_tokenizer,) if spec.window_tokenizer else ()):
            models.resolve(m)
    except (ValueError, FileNotFoundError) as e:
        raise checks.wrap(e) from None
    config = checks.check_model(spec)
    prepared = kind.prepare(spec, config)
    spec = prepared.spec
    output_dir.check_output_dir(spec)
    distributed.barrier("geom_jax:output_dir")  # every process checks the folder before any writes
    held = lock.RunLock(spec.output_dir) if jax.process_index() == 0 else None
    try:
        if held is not None:
            held.acquire()
    except lock.RunLockedError as e:
        raise checks.wrap(e) from None
    space = output_dir.SpaceNeeded()
    try:
        if spec.resume and _complete(spec.output_dir):
            return results.load_results(spec.output_dir)
        computed = kind.compute(prepared, mesh, space)
        return _write(spec, kind, computed, mesh, t_start, clock)
    except Exception as e:
        if is_disk_full(e):
            raise checks.wrap(full_disk_error(spec.output_dir, space.bytes)) from None
        raise
    finally:
        if held is not None:
            held.release()


def _complete(out: str) -> bool:
    """On resume: whether the run already finished (a damaged results.npz is removed,
    to be rebuilt)."""
    if not os.path.isfile(os.path.join(out, results.RESULTS_FILE)):
        return False
    problem = results.results_problem(out)
    if problem is None:
        logging.info("%s is complete; nothing to do", out)
        return True
    logging.warning("%s; rebuilding it from the checkpoints", problem)
    if jax.process_index() == 0:
        os.unlink(os.path.join(out, results.RESULTS_FILE))
    return False


def _write(spec, kind, computed, mesh, t_start: float, clock) -> dict:
    """The run's files, written by process 0 (``results.npz``, ``tokens.npz``,
    ``RESULTS.md``, then ``metadata.json``); returns the arrays as saved."""
    observables = spec.observable_set
    arrays = results.as_saved(computed.arrays, observables, kind)
    if jax.process_index() == 0:
        health.report_degenerate(arrays["status"], observables)
        results.save_results(spec.output_dir, arrays, observables, kind)
        meta = run_metadata.metadata(
            spec,
            computed.model,
            computed.source,
            mesh,
            num_rows=computed.num_rows,
            wall_s=time.time() - t_start,
            compute_s=computed.compute_s,
        )
        meta["compilation"] = clock.totals()
        logging.info("%s", clock.summary())
        if computed.random_init is not None:
            meta["random_init"] = computed.random_init
        meta.update(computed.metadata)
        results.files.write_json(os.path.join(spec.output_dir, results.METADATA_FILE), meta)
        logging.info("Wrote %s", os.path.join(spec.output_dir, results.RESULTS_FILE))
    distributed.barrier("geom_jax:written")
    return arrays


__all__ = ["UserError", "load_model", "run", "select"]
