"""One token-geometry experiment, from flags to result files.

:func:`run` validates everything it can before any compute (model name,
dataset, lengths, output folder), selects and tokenises the prompts, builds
the sweep (each prompt once, or at every shuffle level), streams it through
the fused :class:`~geom_jax.pipeline.GeometryPipeline` with checkpoints, and
writes ``results.npz`` and ``metadata.json``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time

import numpy as np
from absl import flags, logging

from geom_jax import data, results

METHODS = ("structured", "shuffled")
PROBE_PREFIX = ".write-test-"


class UserError(ValueError):
    """A problem with the run's inputs, reported to the user without a traceback."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run's results (``--resume`` checks it matches)."""

    output_dir: str
    model: str = "smollm2-135m"
    dataset: str = data.PYDOC
    text_field: str = "text"
    split: str = "train"
    method: str = "structured"
    max_tokens: int = 1024
    max_shuffle: int = 5
    num_prompts: int | None = 16
    batch_size: int = 1
    range_max: int | None = None  # None: min(256, N - 1), resolved by run()
    max_k: int = 32
    seed: int = 0
    add_bos: bool = False
    filter_models: tuple[str, ...] = ()
    dtype: str = "float32"
    param_dtype: str = "float32"
    layer_chunk: int | None = None
    # Not part of the results' definition:
    resume: bool = False
    streaming: bool = False
    checkpoint_every: int = 4
    progress: bool = True
    mesh_shape: str = ""
    fsdp: bool = False
    params_checkpoint: str = ""

    NON_DEFINING = (
        "output_dir",
        "resume",
        "streaming",
        "checkpoint_every",
        "progress",
        "mesh_shape",
        "fsdp",
        "params_checkpoint",
    )

    def defining(self) -> dict:
        """The fields that define the results, plus the runtime's process count
        (from jax, so also right when SLURM or a TPU pod started jax.distributed
        without --num_processes): ``--resume`` refuses a change of either."""
        import jax  # pylint: disable=g-import-not-at-top

        d = dataclasses.asdict(self)
        for k in self.NON_DEFINING:
            d.pop(k)
        d["filter_models"] = list(d["filter_models"])
        d["num_processes"] = jax.process_count()
        return d

    @classmethod
    def from_flags(cls, f) -> RunSpec:
        """The spec of parsed absl flags: every field has the flag of its name;
        a few flags use 0 / empty / None for "not set"."""
        kw = {field.name: getattr(f, field.name) for field in dataclasses.fields(cls)}
        kw.update(
            num_prompts=f.num_prompts if f.num_prompts > 0 else None,
            filter_models=tuple(f.filter_models or ()),
            layer_chunk=f.layer_chunk or None,
            mesh_shape=f.mesh_shape or "",
            params_checkpoint=f.params_checkpoint or "",
        )
        return cls(**kw)


def define_flags() -> None:
    """Defines the absl flags of ``experiments/token_geometry.py``."""
    d = RunSpec(output_dir="")
    flags.DEFINE_string("model", d.model, "Model alias, Hub id, local folder or .gguf file.")
    flags.DEFINE_string(
        "dataset", d.dataset, "'pydoc', a Hub dataset id (NeelNanda/pile-10k), .txt/.jsonl path."
    )
    flags.DEFINE_string("text_field", d.text_field, "Field holding the text (.jsonl, datasets).")
    flags.DEFINE_string("split", d.split, "Dataset split.")
    flags.DEFINE_bool("streaming", d.streaming, "Stream a Hub dataset instead of caching it.")
    flags.DEFINE_enum("method", d.method, METHODS, "structured, or shuffled at s=0..max_shuffle.")
    flags.DEFINE_integer("max_tokens", d.max_tokens, "Tokens per prompt (shorter are dropped).")
    flags.DEFINE_integer("max_shuffle", d.max_shuffle, "Largest shuffle index s (4**s blocks).")
    flags.DEFINE_integer("num_prompts", d.num_prompts, "Prompts to keep (0 = all qualifying).")
    flags.DEFINE_integer("batch_size", d.batch_size, "Rows per jitted step.")
    flags.DEFINE_integer(
        "range_max",
        d.range_max,
        "Largest GRIDE neighbour rank n2 (default: the largest the prompt length supports, "
        "up to 256; recorded in metadata.json).",
    )
    flags.DEFINE_integer("max_k", d.max_k, "Largest neighbourhood size k of the overlap.")
    flags.DEFINE_integer("seed", d.seed, "Seed of the block shuffles.")
    flags.DEFINE_bool("add_bos", d.add_bos, "Prepend the tokenizer's BOS token.")
    flags.DEFINE_list(
        "filter_models", [], "Other models whose tokenizers a prompt must also fill (comparisons)."
    )
    flags.DEFINE_enum("dtype", d.dtype, ["float32", "bfloat16"], "Activation dtype.")
    flags.DEFINE_enum("param_dtype", d.param_dtype, ["float32", "bfloat16"], "Parameter dtype.")
    flags.DEFINE_integer("layer_chunk", 0, "Layers per metrics chunk (0 = automatic).")
    flags.DEFINE_string("output_dir", None, "Folder for results.npz and metadata.json.")
    flags.DEFINE_bool("resume", False, "Continue the run checkpointed in --output_dir.")
    flags.DEFINE_integer("checkpoint_every", d.checkpoint_every, "Batches between checkpoints.")
    flags.DEFINE_bool("progress", d.progress, "Show a progress bar.")
    flags.DEFINE_string(
        "mesh_shape", "", "Device mesh 'DATA,MODEL' (default: every device on data)."
    )
    flags.DEFINE_bool("fsdp", False, "Also shard parameters' embed axis over data (FSDP).")
    flags.DEFINE_string(
        "params_checkpoint", "", "Orbax folder of converted parameters (written if missing)."
    )
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
    flags.mark_flag_as_required("output_dir")


def check_spec(spec: RunSpec) -> None:
    """Static checks of the flags (no file or model access)."""
    from geom_jax import metrics  # pylint: disable=g-import-not-at-top

    if spec.method not in METHODS:
        raise UserError(f"--method must be one of {METHODS}, got {spec.method!r}")
    if spec.batch_size < 1:
        raise UserError(f"--batch_size must be positive, got {spec.batch_size}")
    if spec.checkpoint_every < 1:
        raise UserError(f"--checkpoint_every must be positive, got {spec.checkpoint_every}")
    if not spec.text_field:
        raise UserError("--text_field must not be empty")
    if spec.max_tokens < 4:
        raise UserError(f"--max_tokens must be at least 4, got {spec.max_tokens}")
    if spec.method == "shuffled":
        try:
            data.check_divisible(spec.max_tokens, spec.max_shuffle)
        except ValueError as e:
            raise UserError(f"--method=shuffled: {e}") from None
    try:
        metrics.check_sizes(
            spec.max_tokens + int(spec.add_bos), range_max=spec.range_max, max_k=spec.max_k
        )
    except ValueError as e:
        raise UserError(str(e)) from None


def with_range_max(spec: RunSpec) -> RunSpec:
    """spec with range_max None replaced by the largest range its prompts support."""
    from geom_jax import metrics  # pylint: disable=g-import-not-at-top

    n = spec.max_tokens + int(spec.add_bos)
    resolved = metrics.check_sizes(n, range_max=spec.range_max, max_k=spec.max_k)
    return dataclasses.replace(spec, range_max=resolved)


def check_output_dir(spec: RunSpec) -> None:
    """Refuses to overwrite a run; on --resume, checks the run is the same one.

    Creates the folder (empty) to prove it is writable; the run's files are
    written only once every input has been checked.
    """
    out = spec.output_dir
    if not out:
        raise UserError("--output_dir is required")
    config_path = os.path.join(out, results.RUN_CONFIG_FILE)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--output_dir={out!r} exists and is not a folder")
    existing = os.path.isdir(out) and any(not f.startswith(PROBE_PREFIX) for f in os.listdir(out))
    if existing and not spec.resume:
        raise UserError(
            f"--output_dir={out!r} already holds files; pass --resume to continue that run, "
            "or choose another folder (nothing was overwritten)"
        )
    if existing and spec.resume and os.path.isfile(config_path):
        saved = results.read_json(config_path)
        diff = {k: (saved.get(k), v) for k, v in spec.defining().items() if saved.get(k) != v}
        if diff:
            raise UserError(
                f"--resume: the run in {out!r} used other settings "
                + ", ".join(f"--{k}={a!r} (now {b!r})" for k, (a, b) in sorted(diff.items()))
            )
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f"{PROBE_PREFIX}{os.getpid()}")
        with open(probe, "w") as fh:
            fh.write("ok")
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"--output_dir={out!r} is not writable: {e.strerror}") from None


def record_run_config(spec: RunSpec) -> None:
    path = os.path.join(spec.output_dir, results.RUN_CONFIG_FILE)
    if not os.path.isfile(path):
        results.write_json(path, spec.defining())


def select(spec: RunSpec, tokenizer) -> tuple[data.PromptSource, data.PromptSelection]:
    """Opens the dataset and keeps the prompts that fill every tokenizer."""
    from geom_jax import models  # pylint: disable=g-import-not-at-top

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
        raise UserError(str(e)) from None


def build_plan(spec: RunSpec, selection: data.PromptSelection):
    """Rows of the sweep: every prompt, at every shuffle level if shuffled."""
    from geom_jax import sweep  # pylint: disable=g-import-not-at-top

    levels = np.arange(spec.max_shuffle + 1) if spec.method == "shuffled" else np.zeros(1, int)
    num_prompts = len(selection.indices)
    row_prompt = np.repeat(np.arange(num_prompts), len(levels))
    row_shuffle = np.tile(levels, num_prompts)
    keep_first = int(spec.add_bos)

    def make_batch(rows: np.ndarray):
        ids = np.stack(
            [
                data.shuffle_tokens(
                    selection.token_ids[row_prompt[r]],
                    int(row_shuffle[r]),
                    seed=spec.seed,
                    prompt_index=int(selection.indices[row_prompt[r]]),
                    keep_first=keep_first,
                )
                for r in rows
            ]
        ).astype(np.int32)
        return ids, np.ones_like(ids)

    plan = sweep.SweepPlan(
        prompt_index=selection.indices[row_prompt],
        shuffle_index=row_shuffle.astype(np.int32),
        make_batch=make_batch,
    )
    keys = np.asarray([selection.keys[p] for p in row_prompt])
    return plan, keys


def _local_plan(plan, rows):
    from geom_jax import sweep  # pylint: disable=g-import-not-at-top

    return sweep.SweepPlan(
        prompt_index=plan.prompt_index[rows],
        shuffle_index=plan.shuffle_index[rows],
        make_batch=lambda local: plan.make_batch(rows[local]),
    )


def run(spec: RunSpec) -> dict:
    """Runs the experiment; returns the arrays written to ``results.npz``.

    In a multi-process run (``jax.distributed`` initialised), every process
    calls this with the same spec; process 0 writes the merged results.
    """
    import jax  # pylint: disable=g-import-not-at-top

    from geom_jax import (  # pylint: disable=g-import-not-at-top
        distributed,
        models,
        pipeline,
        sharding,
        sweep,
    )

    t_start = time.time()
    check_spec(spec)
    spec = with_range_max(spec)
    try:
        mesh = sharding.make_mesh(sharding.parse_mesh_shape(spec.mesh_shape))
        sharding.check_batch(mesh, spec.batch_size)
        distributed.check_batch(spec.batch_size, jax.process_count())
        models.resolve(spec.model)
        for m in spec.filter_models:
            models.resolve(m)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    check_output_dir(spec)
    out = spec.output_dir
    if spec.resume and os.path.isfile(os.path.join(out, results.RESULTS_FILE)):
        logging.info("%s is complete; nothing to do", out)
        return results.load_results(out)

    try:
        tokenizer = models.load_tokenizer(spec.model)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    source, selection = select(spec, tokenizer)
    plan, keys = build_plan(spec, selection)
    logging.info(
        "%d prompts of %s (of %d scanned), %d rows",
        len(selection.indices),
        spec.dataset,
        selection.num_scanned,
        len(plan),
    )

    distributed.barrier("geom_jax:validated")
    if jax.process_index() == 0:
        record_run_config(spec)
    rules = models.fsdp_rules() if spec.fsdp else None
    try:
        compute_dtype, param_dtype = pipeline.execution_dtypes(spec.dtype, spec.param_dtype)
        model, _ = models.load(
            spec.model,
            dtype=compute_dtype,
            param_dtype=param_dtype,
            tokenizer=False,
            mesh=mesh,
            rules=rules,
            params_checkpoint=spec.params_checkpoint or None,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    pipe = pipeline.GeometryPipeline(
        model,
        range_max=spec.range_max,
        max_k=spec.max_k,
        layer_chunk=spec.layer_chunk,
        mesh=mesh,
        rules=rules,
    )
    num_tokens = selection.token_ids.shape[1]
    rows = distributed.local_rows(
        len(plan), spec.batch_size, jax.process_index(), jax.process_count()
    )
    t_compute = time.time()
    store = sweep.run_sweep(
        _local_plan(plan, rows),
        pipe,
        batch_size=spec.batch_size // jax.process_count(),
        checkpoint_dir=os.path.join(out, sweep.CHECKPOINT_DIR),
        resume=spec.resume,
        checkpoint_every=spec.checkpoint_every,
        progress=spec.progress and jax.process_index() == 0,
        shapes=pipe.output_shapes(spec.batch_size, num_tokens),
        to_host=pipe.to_host,
        agree_on_start=distributed.agree_on_min,
    )
    compute_time = time.time() - t_compute
    arrays = {
        "prompt_index": plan.prompt_index,
        "prompt_key": keys,
        "shuffle_index": plan.shuffle_index,
        "gride_n1": 2 ** np.arange(store.arrays["gride_ids"].shape[-1]),
        **distributed.gather_rows(len(plan), rows, store.arrays),
    }
    if jax.process_index() == 0:
        results.save_results(out, arrays)
        results.write_json(
            os.path.join(out, results.METADATA_FILE),
            {
                "model": spec.model,
                "checkpoint": model.config.checkpoint_id,
                "model_config": dataclasses.asdict(model.config),
                "dataset": source.describe(),
                "flags": spec.defining(),
                "mesh_shape": list(mesh.devices.shape),
                "num_processes": jax.process_count(),
                "num_rows": len(plan),
                "execution_dtypes": {
                    "compute": str(model.dtype),
                    "params": str(model.param_dtype),
                },
                "versions": results.package_versions(),
                "git_commit": results.git_commit(),
                "device": str(jax.devices()[0].device_kind),
                "backend": jax.default_backend(),
                "num_devices": jax.device_count(),
                "host": socket.gethostname(),
                "wall_time_s": round(time.time() - t_start, 2),
                "compute_time_s": round(compute_time, 2),
            },
        )
        logging.info("Wrote %s", os.path.join(out, results.RESULTS_FILE))
    distributed.barrier("geom_jax:written")
    return arrays
