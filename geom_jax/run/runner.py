"""One token-geometry run, from its spec to its result files.

:func:`run` checks everything it can before any compute (fields, model,
dataset, lengths, output folder), selects and tokenises the prompts, builds
the sweep (each prompt once, or at every shuffle level), streams it through
the fused :class:`~geom_jax.pipeline.GeometryPipeline` with checkpoints, and
writes ``results.npz``, ``metadata.json`` and ``RESULTS.md``.
"""

from __future__ import annotations

import os
import time

import jax
from absl import logging

from geom_jax import data, models, pipeline, results, sharding
from geom_jax.run import checks, clouds, distributed, health, lock, output_dir, plan, sweep
from geom_jax.run import metadata as run_metadata
from geom_jax.run import spec as run_spec
from geom_jax.run.checks import UserError
from geom_jax.run.disk_space import full_disk_error, is_disk_full


def select(spec: run_spec.RunSpec, tokenizer) -> tuple[data.PromptSource, data.PromptSelection]:
    """Opens the dataset and keeps the prompts that fill every tokenizer."""
    try:
        source = data.open_source(
            spec.dataset, text_field=spec.text_field, split=spec.split, streaming=spec.streaming
        )
        tokenizers = [tokenizer] + [models.load_tokenizer(m) for m in spec.filter_models]
        return source, data.select_prompts(
            source,
            tokenizers,
            max_tokens=spec.max_tokens,
            num_prompts=spec.num_prompts,
            add_bos=spec.add_bos,
            dataset_name=spec.dataset,
        )
    except (ValueError, FileNotFoundError) as e:
        raise checks.wrap(e) from None


def load_model(spec: run_spec.RunSpec, mesh, rules):
    """The run's model: its trained weights, or seeded random ones (random_init).
    Returns (model, the random init's record or None)."""
    compute_dtype, param_dtype = pipeline.execution_dtypes(spec.dtype, spec.param_dtype)
    kw = dict(
        dtype=compute_dtype,
        param_dtype=param_dtype,
        tokenizer=False,
        mesh=mesh,
        rules=rules,
        revision=spec.revision or None,
    )
    try:
        if spec.random_init is not None:
            model, _, record = models.load_random(spec.model, seed=spec.random_init, **kw)
            return model, record.metadata()
        model, _ = models.load(spec.model, params_checkpoint=spec.params_checkpoint or None, **kw)
        return model, None
    except ValueError as e:
        raise checks.wrap(e) from None


def run(spec: run_spec.RunSpec) -> dict:
    """Runs the experiment; returns the arrays written to ``results.npz``.

    In a multi-process run (``jax.distributed`` initialised), every process
    calls this with the same spec; process 0 writes the merged results.

    Raises:
      UserError: a bad input, before any compute, naming the fields.
    """
    t_start = time.time()
    checks.check_spec(spec)
    if spec.kind == run_spec.CLOUDS:
        clouds.check_clouds_spec(spec)
    else:
        spec = checks.resolved(spec)
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
    selected = None
    if spec.kind == run_spec.CLOUDS:
        selected = _select_clouds(spec, config)
        spec = selected[-1]
    output_dir.check_output_dir(spec)
    held = lock.RunLock(spec.output_dir) if jax.process_index() == 0 else None
    try:
        if held is not None:
            held.acquire()
    except lock.RunLockedError as e:
        raise checks.wrap(e) from None
    space = output_dir.SpaceNeeded()
    try:
        if selected is not None:
            return _run_clouds(spec, mesh, t_start, space, selected)
        return _run_locked(spec, mesh, config, t_start, space)
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


def _tokenizer(spec: run_spec.RunSpec):
    try:
        return models.load_tokenizer(spec.model, revision=spec.revision or None)
    except (ValueError, OSError) as e:
        raise checks.wrap(e) from None


def _run_locked(spec, mesh, config, t_start: float, space: output_dir.SpaceNeeded) -> dict:
    out = spec.output_dir
    observables = spec.observable_set
    if spec.resume and _complete(out):
        return results.load_results(out)
    source, selection = select(spec, _tokenizer(spec))
    checks.check_token_ids(selection.token_ids, config.vocab_size, spec.model)
    rows_plan, keys = plan.build_plan(spec, selection)
    logging.info(
        "%d prompts of %s (of %d scanned), %d rows",
        len(selection.indices),
        spec.dataset,
        selection.num_scanned,
        len(rows_plan),
    )

    distributed.barrier("geom_jax:validated")
    rules = models.fsdp_rules() if spec.fsdp else None
    model, random_init = load_model(spec, mesh, rules)
    try:
        pipe = pipeline.GeometryPipeline(
            model,
            observables=observables,
            layer_chunk=spec.layer_chunk,
            mesh=mesh,
            rules=rules,
            options=spec.option_values(),
        )
    except ValueError as e:
        raise checks.wrap(e) from None
    num_tokens = selection.token_ids.shape[1]
    shapes = pipe.output_shapes(spec.batch_size, num_tokens)
    space.set_from(shapes, len(rows_plan))
    if jax.process_index() == 0:
        output_dir.check_free_space(out, space.bytes, os.path.join(out, sweep.CHECKPOINT_DIR))
        output_dir.record_run_config(spec)
    rows = distributed.local_rows(
        len(rows_plan), spec.batch_size, jax.process_index(), jax.process_count()
    )
    t_compute = time.time()
    store = sweep.run_sweep(
        plan.local_plan(rows_plan, rows),
        pipe,
        batch_size=spec.batch_size // jax.process_count(),
        checkpoint_dir=os.path.join(out, sweep.CHECKPOINT_DIR),
        resume=spec.resume,
        checkpoint_every=spec.checkpoint_every,
        progress=spec.progress and jax.process_index() == 0,
        shapes=shapes,
        to_host=pipe.to_host,
        agree_on_start=distributed.agree_on_min,
    )
    compute_time = time.time() - t_compute
    arrays = results.as_saved(
        {
            "prompt_index": rows_plan.prompt_index,
            "prompt_key": keys,
            "shuffle_index": rows_plan.shuffle_index,
            "shuffle_repeat": rows_plan.shuffle_repeat,
            **distributed.gather_rows(len(rows_plan), rows, store.arrays),
        },
        observables,
    )
    if jax.process_index() == 0:
        health.report_degenerate(arrays["status"], observables)
        results.save_results(out, arrays, observables)
        _write_metadata(
            spec, model, source, mesh, len(rows_plan), t_start, compute_time, random_init
        )
    distributed.barrier("geom_jax:written")
    return arrays


def _write_metadata(
    spec, model, source, mesh, num_rows, t_start, compute_time, random_init, **extra
):
    meta = run_metadata.metadata(
        spec,
        model,
        source,
        mesh,
        num_rows=num_rows,
        wall_s=time.time() - t_start,
        compute_s=compute_time,
    )
    if random_init is not None:
        meta["random_init"] = random_init
    meta.update(extra)
    results.files.write_json(os.path.join(spec.output_dir, results.METADATA_FILE), meta)
    logging.info("Wrote %s", os.path.join(spec.output_dir, results.RESULTS_FILE))


def _select_clouds(spec, config):
    """(source, rows, clouds, summary, spec with its options resolved for the clouds):
    read and checked before the output folder is touched."""
    tokenizer = _tokenizer(spec)
    source, rows, summary = clouds.select_rows(spec, tokenizer)
    checks.check_token_ids(rows.input_ids, config.vocab_size, spec.model)
    spec = clouds.for_labels(spec, rows)
    cl = clouds.clouds_of(spec, rows)
    n = clouds.check_cloud_sizes(spec, cl)
    return source, rows, cl, summary, clouds.resolve_options(spec, n)


def _run_clouds(spec, mesh, t_start: float, space, selected) -> dict:
    source, rows, cl, summary, _ = selected
    out = spec.output_dir
    observables = spec.observable_set
    clouds.log_selection(summary, rows, cl)
    if spec.resume and _complete(out):
        return results.load_results(out)
    rules = models.fsdp_rules() if spec.fsdp else None
    model, random_init = load_model(spec, mesh, rules)
    pipe = pipeline.PooledPipeline(
        model, pool=spec.pool, skip_first=spec.add_bos, mesh=mesh, rules=rules
    )
    space.bytes = int(1.2 * len(rows) * pipe.layers * pipe.dim * 4) + (1 << 24)
    output_dir.check_free_space(out, space.bytes, os.path.join(out, clouds.STORE))
    output_dir.record_run_config(spec)
    t_compute = time.time()
    reps, losses = clouds.open_stores(
        out, len(rows), pipe.layers, pipe.dim, spec.batch_size * spec.checkpoint_every
    )
    clouds.pooled_sweep(
        pipe, rows, reps, losses, batch_size=spec.batch_size, progress=spec.progress
    )
    geo = clouds.measure(spec, reps, rows, cl, spec.progress, mesh)
    compute_time = time.time() - t_compute
    arrays = results.as_saved(
        {**clouds.cloud_arrays(cl), **geo, **clouds.row_arrays(rows, losses)},
        observables,
        results.CLOUDS,
    )
    health.report_degenerate(arrays["status"], observables)
    results.save_results(out, arrays, observables, results.CLOUDS)
    _write_metadata(
        spec,
        model,
        source,
        mesh,
        len(rows),
        t_start,
        compute_time,
        random_init,
        selection=summary,
        num_clouds=len(cl),
        class_names=list(rows.class_names),
    )
    return arrays


__all__ = ["UserError", "load_model", "run", "select"]
