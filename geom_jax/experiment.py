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

from geom_jax import data, disk_space, results, run_lock

METHODS = ("structured", "shuffled", "permuted")
PROBE_PREFIX = ".write-test-"


class UserError(ValueError):
    """A problem with the run's inputs, reported to the user without a traceback."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run's results (``--resume`` checks it matches)."""

    output_dir: str
    model: str = "smollm2-135m"
    revision: str = ""
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
    observables: str = "paper"
    shuffle_repeats: int = 1
    lens: str = "logit"
    logit_range_max: int = 64
    duplicate_tolerance: float = 1e-5
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
            num_prompts=f.num_prompts if f.num_prompts != 0 else None,
            filter_models=tuple(f.filter_models or ()),
            layer_chunk=f.layer_chunk or None,
            mesh_shape=f.mesh_shape or "",
            revision=f.revision or "",
            params_checkpoint=f.params_checkpoint or "",
        )
        try:
            kw["observables"] = canonical_observables(f.observables)
        except ValueError:
            pass  # check_spec reports it
        return cls(**kw)


def canonical_observables(spec: str) -> str:
    """ "paper", "all" or the comma list of names, so that --resume compares sets."""
    return _registry().canonical(spec)


def _registry():
    """The observable registry with the pipeline's model-level observables (lens, logit_id)."""
    from geom_jax import metrics, pipeline  # noqa: F401  pylint: disable=g-import-not-at-top

    return metrics.registry


DEFAULTS_OF_LATER_FIELDS = {
    "observables": "paper",
    "shuffle_repeats": 1,
    "lens": "logit",
    "logit_range_max": 64,
}
"""Defining fields added after runs were recorded: their value in such runs (--resume)."""


def observable_options(spec: RunSpec) -> dict:
    """The ``options=`` of the lens / logit_id observables."""
    return {"lens": spec.lens, "logit_range_max": spec.logit_range_max}


def define_flags() -> None:
    """Defines the absl flags of ``experiments/token_geometry.py``."""
    d = RunSpec(output_dir="")
    flags.DEFINE_string("model", d.model, "Model alias, Hub id, local folder or .gguf file.")
    flags.DEFINE_string(
        "revision", None, "Hub branch, tag or commit of --model (e.g. a training step: step1000)."
    )
    flags.DEFINE_string(
        "dataset", d.dataset, "'pydoc', a Hub dataset id (NeelNanda/pile-10k), .txt/.jsonl path."
    )
    flags.DEFINE_string("text_field", d.text_field, "Field holding the text (.jsonl, datasets).")
    flags.DEFINE_string("split", d.split, "Dataset split.")
    flags.DEFINE_bool("streaming", d.streaming, "Stream a Hub dataset instead of caching it.")
    flags.DEFINE_enum(
        "method",
        d.method,
        METHODS,
        "structured; shuffled at s=0..max_shuffle; permuted: the structured prompt and "
        "--shuffle_repeats full random permutations of its tokens.",
    )
    flags.DEFINE_integer(
        "shuffle_repeats",
        d.shuffle_repeats,
        "Independent shuffles per level s > 0 (shuffled) or full permutations (permuted).",
    )
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
    flags.DEFINE_string(
        "observables",
        d.observables,
        "'paper' (GRIDE/TwoNN, cosine, overlap), 'all', or a comma list of names "
        "(may include 'paper', e.g. paper,reciprocity).",
    )
    flags.DEFINE_string(
        "lens", d.lens, "Lens of the lens observable: 'logit' or 'tuned:DIR' (train_tuned_lens.py)."
    )
    flags.DEFINE_integer(
        "logit_range_max", d.logit_range_max, "Largest GRIDE neighbour rank n2 of logit_id."
    )
    flags.DEFINE_float(
        "duplicate_tolerance",
        d.duplicate_tolerance,
        "Tokens closer than this times the cloud's RMS norm count as one for the ID "
        "estimators (0 = exact duplicates only; ~1e-2 for bfloat16 activations).",
    )
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
    if spec.num_prompts is not None and spec.num_prompts < 1:
        raise UserError(
            f"--num_prompts must be >= 0 (0 = every qualifying prompt), got {spec.num_prompts}"
        )
    if spec.layer_chunk is not None and spec.layer_chunk < 1:
        raise UserError(f"--layer_chunk must be >= 0 (0 = automatic), got {spec.layer_chunk}")
    if spec.max_shuffle < 0:
        raise UserError(f"--max_shuffle must be >= 0, got {spec.max_shuffle}")
    if spec.seed < 0:
        raise UserError(f"--seed must be >= 0, got {spec.seed}")
    if not 0 <= spec.duplicate_tolerance < 1:
        raise UserError(f"--duplicate_tolerance must be in [0, 1), got {spec.duplicate_tolerance}")
    try:
        names = _registry().resolve(spec.observables, "--observables")
        n = spec.max_tokens + int(spec.add_bos)
        options = metrics.geometry.options_of(
            range_max=metrics.validation.resolve_range_max(n, spec.range_max),
            max_k=spec.max_k,
            options=observable_options(spec),
        )
        metrics.geometry.check_observables(names, options, n)
    except ValueError as e:
        raise UserError(_as_flags(str(e))) from None
    check_lens(spec, names)
    if spec.shuffle_repeats < 1:
        raise UserError(f"--shuffle_repeats must be positive, got {spec.shuffle_repeats}")
    if spec.method == "structured" and spec.shuffle_repeats > 1:
        raise UserError(
            f"--shuffle_repeats={spec.shuffle_repeats} applies to --method=shuffled or "
            "--method=permuted; --method=structured runs each prompt once"
        )
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


def _as_flags(message: str) -> str:
    """A library message in the command line's terms."""
    for name in ("logit_range_max", "lens must"):
        message = message.replace(name, "--" + name)
    return message


def check_lens(spec: RunSpec, names) -> None:
    """--lens: 'logit' or 'tuned:DIR' with DIR a trained lens, used by the lens observable."""
    from geom_jax.lens import observables, tuned  # pylint: disable=g-import-not-at-top

    try:
        folder = observables.parse_lens(spec.lens)
    except ValueError as e:
        raise UserError(_as_flags(str(e))) from None
    if folder is None:
        return
    if "lens" not in names:
        raise UserError(
            f"--lens={spec.lens} applies to the lens observable; add lens to --observables "
            f"(now {spec.observables!r})"
        )
    try:
        tuned.read_meta(folder)
    except (ValueError, OSError) as e:
        raise UserError(f"--lens={spec.lens}: {e}") from None


def check_model(spec: RunSpec):
    """Reads the model's configuration (no weights) and checks the run fits it:
    a ported architecture, and prompts within its context length. Returns the
    DecoderConfig."""
    from geom_jax import models  # pylint: disable=g-import-not-at-top

    try:
        config = models.load_config(spec.model, revision=spec.revision or None)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"--model={spec.model}: {e}") from None
    num_tokens = spec.max_tokens + int(spec.add_bos)
    if num_tokens > config.max_position_embeddings:
        bos = " + 1 (--add_bos)" if spec.add_bos else ""
        raise UserError(
            f"--max_tokens={spec.max_tokens}{bos} exceeds the context of --model={spec.model}: "
            f"its max_position_embeddings is {config.max_position_embeddings}"
        )
    return config


def check_token_ids(token_ids: np.ndarray, vocab_size: int, model: str) -> None:
    """Refuses token ids the model has no embedding for (a tokenizer of another
    model, a corrupt vocabulary) before any compute."""
    bad = (token_ids < 0) | (token_ids >= vocab_size)
    if bad.any():
        row, pos = (int(i) for i in np.argwhere(bad)[0])
        raise UserError(
            f"prompt {row}, token {pos}: id {int(token_ids[row, pos])} is outside the vocabulary "
            f"of --model={model} (vocab_size {vocab_size}); is the tokenizer the model's own?"
        )


def _holds_a_run(out: str) -> bool:
    """Whether ``out`` holds more than a run leaves before its first checkpoint
    (its run_config.json, lock, an empty checkpoints folder): such a folder is
    reusable by a fresh run."""
    from geom_jax import run_lock, sweep  # pylint: disable=g-import-not-at-top

    for name in os.listdir(out):
        path = os.path.join(out, name)
        if name.startswith(PROBE_PREFIX) or name in (run_lock.LOCK_FILE, results.RUN_CONFIG_FILE):
            continue
        if name == sweep.CHECKPOINT_DIR and os.path.isdir(path):
            if not any(n.isdigit() for n in os.listdir(path)):
                continue
        return True
    return False


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
    existing = os.path.isdir(out) and _holds_a_run(out)
    if existing and not spec.resume:
        raise UserError(
            f"--output_dir={out!r} already holds files; pass --resume to continue that run, "
            "or choose another folder (nothing was overwritten)"
        )
    if existing and spec.resume and os.path.isfile(config_path):
        saved = results.read_json(config_path)
        for key, value in DEFAULTS_OF_LATER_FIELDS.items():  # runs from before these flags
            saved.setdefault(key, value)
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
    """Writes run_config.json (on --resume of a started run it already matches)."""
    results.write_json(os.path.join(spec.output_dir, results.RUN_CONFIG_FILE), spec.defining())


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


def row_levels(spec: RunSpec) -> tuple[np.ndarray, np.ndarray]:
    """(shuffle_index, shuffle_repeat) of one prompt's rows, in sweep order: the
    structured prompt (0, 0), then, if shuffled, each level s = 1..max_shuffle
    with repeats 0..R-1, or, if permuted, R full permutations (FULL_PERMUTATION, r)."""
    r = spec.shuffle_repeats
    if spec.method == "shuffled":
        levels = np.repeat(np.arange(1, spec.max_shuffle + 1), r)
        repeats = np.tile(np.arange(r), spec.max_shuffle)
    elif spec.method == "permuted":
        levels, repeats = np.full(r, data.FULL_PERMUTATION), np.arange(r)
    else:
        levels = repeats = np.zeros(0, int)
    return np.concatenate([[0], levels]).astype(int), np.concatenate([[0], repeats]).astype(int)


def build_plan(spec: RunSpec, selection: data.PromptSelection):
    """Rows of the sweep: every prompt, at every shuffle level and repeat (row_levels)."""
    from geom_jax import sweep  # pylint: disable=g-import-not-at-top

    levels, repeats = row_levels(spec)
    num_prompts = len(selection.indices)
    row_prompt = np.repeat(np.arange(num_prompts), len(levels))
    row_shuffle = np.tile(levels, num_prompts)
    row_repeat = np.tile(repeats, num_prompts)
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
                    repeat=int(row_repeat[r]),
                )
                for r in rows
            ]
        ).astype(np.int32)
        return ids, np.ones_like(ids)

    plan = sweep.SweepPlan(
        prompt_index=selection.indices[row_prompt],
        shuffle_index=row_shuffle.astype(np.int32),
        make_batch=make_batch,
        shuffle_repeat=row_repeat.astype(np.int32),
    )
    keys = np.asarray([selection.keys[p] for p in row_prompt])
    return plan, keys


def check_free_space(out: str, needed: int, checkpoint_dir: str) -> None:
    """Refuses to start a computation whose results cannot fit on the disk
    (a resumed run needs only the space it does not already use)."""
    used = 0
    for root, _, files in os.walk(checkpoint_dir):
        used += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    if disk_space.free_bytes(out) + used < needed:
        raise UserError(disk_space.full_disk_message(out, needed))


def degenerate_summary(status: np.ndarray) -> str | None:
    """One line counting the rows and layers flagged in ``status`` [P, L], or None."""
    from geom_jax import pipeline  # pylint: disable=g-import-not-at-top

    parts = []
    for flag, what in (
        (pipeline.STATUS_NON_FINITE, "non-finite hidden states (all observables NaN)"),
        (pipeline.STATUS_FEW_DISTINCT, "too few distinct tokens for some GRIDE scales (NaN)"),
        (pipeline.STATUS_DUPLICATES, "tokens merged as (near-)duplicates"),
    ):
        hit = (status & flag) != 0
        if hit.any():
            parts.append(f"{int(hit.any(axis=1).sum())} rows ({int(hit.sum())} layers) with {what}")
    if not parts:
        return None
    return f"degenerate clouds among {status.shape[0]} rows x {status.shape[1]} layers: " + (
        "; ".join(parts) + " (results.npz 'status')"
    )


def report_degenerate(status: np.ndarray) -> None:
    line = degenerate_summary(np.asarray(status, np.int32))
    if line:
        logging.warning("%s", line)
    else:
        logging.info("no degenerate clouds: every layer finite with enough distinct tokens")


def _local_plan(plan, rows):
    from geom_jax import sweep  # pylint: disable=g-import-not-at-top

    return sweep.SweepPlan(
        prompt_index=plan.prompt_index[rows],
        shuffle_index=plan.shuffle_index[rows],
        make_batch=lambda local: plan.make_batch(rows[local]),
        shuffle_repeat=plan.shuffle_repeat[rows],
    )


def run(spec: RunSpec) -> dict:
    """Runs the experiment; returns the arrays written to ``results.npz``.

    In a multi-process run (``jax.distributed`` initialised), every process
    calls this with the same spec; process 0 writes the merged results.
    """
    import jax  # pylint: disable=g-import-not-at-top

    from geom_jax import distributed, models, sharding  # pylint: disable=g-import-not-at-top

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
    config = check_model(spec)
    check_output_dir(spec)
    lock = run_lock.RunLock(spec.output_dir) if jax.process_index() == 0 else None
    try:
        if lock is not None:
            lock.acquire()
    except run_lock.RunLockedError as e:
        raise UserError(str(e)) from None
    space = _SpaceNeeded()
    try:
        return _run_locked(spec, mesh, config, t_start, space)
    except Exception as e:
        if disk_space.is_disk_full(e):
            raise UserError(disk_space.full_disk_message(spec.output_dir, space.bytes)) from None
        raise
    finally:
        if lock is not None:
            lock.release()


@dataclasses.dataclass
class _SpaceNeeded:
    """Bytes a run writes to its folder: two checkpoints of the result
    arrays, the one being saved, and results.npz (known once the model is)."""

    bytes: int = 1 << 20

    def set_from(self, shapes, num_rows: int) -> None:
        per_row = sum(int(np.prod(s.shape[1:])) * 4 for s in shapes.values()) + 1
        self.bytes = 4 * num_rows * per_row + (1 << 20)


def _run_locked(spec: RunSpec, mesh, config, t_start: float, space: _SpaceNeeded) -> dict:
    import jax  # pylint: disable=g-import-not-at-top

    from geom_jax import (  # pylint: disable=g-import-not-at-top
        distributed,
        models,
        pipeline,
        sweep,
    )

    out = spec.output_dir
    if spec.resume and os.path.isfile(os.path.join(out, results.RESULTS_FILE)):
        problem = results.results_problem(out)
        if problem is None:
            logging.info("%s is complete; nothing to do", out)
            return results.load_results(out)
        logging.warning("%s; rebuilding it from the checkpoints", problem)
        if jax.process_index() == 0:
            os.unlink(os.path.join(out, results.RESULTS_FILE))

    try:
        tokenizer = models.load_tokenizer(spec.model, revision=spec.revision or None)
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from None
    source, selection = select(spec, tokenizer)
    check_token_ids(selection.token_ids, config.vocab_size, spec.model)
    plan, keys = build_plan(spec, selection)
    logging.info(
        "%d prompts of %s (of %d scanned), %d rows",
        len(selection.indices),
        spec.dataset,
        selection.num_scanned,
        len(plan),
    )

    distributed.barrier("geom_jax:validated")
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
            revision=spec.revision or None,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        pipe = pipeline.GeometryPipeline(
            model,
            range_max=spec.range_max,
            max_k=spec.max_k,
            layer_chunk=spec.layer_chunk,
            mesh=mesh,
            rules=rules,
            observables=spec.observables,
            options=observable_options(spec),
            duplicate_tolerance=spec.duplicate_tolerance,
        )
    except ValueError as e:  # e.g. a tuned lens of another model
        raise UserError(f"--lens={spec.lens}: {e}" if "lens" in str(e) else str(e)) from None
    num_tokens = selection.token_ids.shape[1]
    shapes = pipe.output_shapes(spec.batch_size, num_tokens)
    space.set_from(shapes, len(plan))
    if jax.process_index() == 0:
        check_free_space(out, space.bytes, os.path.join(out, sweep.CHECKPOINT_DIR))
        record_run_config(spec)
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
        shapes=shapes,
        to_host=pipe.to_host,
        agree_on_start=distributed.agree_on_min,
    )
    compute_time = time.time() - t_compute
    arrays = {
        "prompt_index": plan.prompt_index,
        "prompt_key": keys,
        "shuffle_index": plan.shuffle_index,
        "shuffle_repeat": plan.shuffle_repeat,
        **distributed.gather_rows(len(plan), rows, store.arrays),
    }
    if "gride_ids" in arrays:
        arrays["gride_n1"] = 2 ** np.arange(arrays["gride_ids"].shape[-1])
    arrays = {k: np.asarray(v, results.DTYPES.get(k)) for k, v in arrays.items()}
    if jax.process_index() == 0:
        report_degenerate(arrays["status"])
        results.save_results(out, arrays, spec.observables)
        results.write_json(
            os.path.join(out, results.METADATA_FILE),
            {
                "model": spec.model,
                "checkpoint": model.config.checkpoint_id,
                "revision": spec.revision or None,
                "commit": models.loading.hub.commit_in(model.config.checkpoint_id),
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
