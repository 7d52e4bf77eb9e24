"""A pooled run: one point per row, the rows of each shuffle level (and partition) a cloud.

The experiment family of Cheng et al. (ICLR 2025, arXiv 2405.15471: the last token
of 20-token sequences, structured and shuffled, GRIDE at scales up to 2**13, 5
partitions), Valeriani et al. (NeurIPS 2023, the mean over the sequence), Doimo et
al. (2024) and Lee et al. (ACL 2025). The rows (windows or prompts, at every shuffle
level and repeat) stream through the pooling forward
(:class:`geom_jax.pipeline.PooledPipeline`) into ``representations.zarr``
[rows, L+1, D] (with the row losses beside it), chunk by verified chunk, so a kill
at any moment resumes exactly; once every row is in, each cloud's geometry is
measured per layer on the accumulated points.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from geom_jax import data, metrics, models, pipeline, results
from geom_jax.io.representation_store import RepresentationStore
from geom_jax.run import checks, plan
from geom_jax.run import spec as run_spec
from geom_jax.run.checks import UserError

STORE = "representations.zarr"
LOSS_STORE = "row_loss.zarr"
LABELS_INPUT = "labels"
"""The per-point class id input of observables that read labels (label overlap)."""


@dataclasses.dataclass(frozen=True)
class Rows:
    """Every row of a pooled run, as run (after shuffling): ids and masks [rows, T],
    and what each row is."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    prompt_index: np.ndarray
    prompt_key: np.ndarray
    shuffle: np.ndarray
    repeat: np.ndarray
    label: np.ndarray | None
    class_names: tuple[str, ...] = ()

    def __len__(self):
        return len(self.input_ids)


@dataclasses.dataclass(frozen=True)
class Cloud:
    """The rows of one cloud: a shuffle level and repeat, and a partition of them."""

    shuffle: int
    repeat: int
    partition: int
    rows: np.ndarray


def check_clouds_spec(spec: run_spec.RunSpec) -> None:
    """What a pooled run refuses before anything is read."""
    observables = spec.observable_set
    token_only = [o.name for o in observables.observables if o.token_cloud]
    if token_only:
        raise UserError(
            "{pool}={pool_value}: {listed} need(s) a prompt's token cloud; remove it from "
            "{observables} (now {current!r})",
            ("pool", "observables"),
            pool_value=spec.pool,
            listed=", ".join(token_only),
            current=spec.observables,
        )
    if spec.partitions < 1:
        raise UserError("{partitions} must be >= 1, got {n}", "partitions", n=spec.partitions)
    if spec.label_field and not spec.windows:
        raise UserError("{label_field} labels windows: add {windows}", ("label_field", "windows"))
    if spec.window_tokenizer and not spec.windows:
        raise UserError(
            "{window_tokenizer} cuts windows: add {windows}", ("window_tokenizer", "windows")
        )
    if spec.filter_models:
        raise UserError(
            "{filter_models} applies to prompts kept whole, not to pooled runs",
            "filter_models",
        )
    if jax.process_count() > 1:
        raise UserError(
            "pooled runs run in one process (with any number of its devices: {mesh_shape}); "
            "got {n} processes",
            "mesh_shape",
            n=jax.process_count(),
        )


def select_rows(spec: run_spec.RunSpec, tokenizer) -> tuple[data.PromptSource, Rows, str]:
    """The rows of the run: every window (or prompt) at every shuffle level and repeat;
    with a window tokenizer, its windows' text re-tokenised by the model's. Returns the
    source, the rows and a one-line summary of the selection."""
    try:
        source = data.open_source(
            spec.dataset,
            text_field=spec.text_field,
            split=spec.split,
            streaming=spec.streaming,
            label_field=spec.label_field or None,
        )
        cutter = (
            models.load_tokenizer(spec.window_tokenizer) if spec.window_tokenizer else tokenizer
        )
        if spec.windows:
            selection = data.select_windows(
                source,
                cutter,
                window_tokens=spec.max_tokens,
                num_windows=spec.num_prompts,
                add_bos=spec.add_bos,
                seed=spec.seed,
                dataset_name=spec.dataset,
            )
            summary = data.window_summary(selection)
            duplicates = data.duplicate_summary(selection)
            if duplicates:
                summary += "; " + duplicates
        else:
            selection = data.select_prompts(
                source,
                [tokenizer],
                max_tokens=spec.max_tokens,
                num_prompts=spec.num_prompts,
                add_bos=spec.add_bos,
                dataset_name=spec.dataset,
            )
            summary = f"{len(selection.indices)} prompts of {spec.dataset}"
    except (ValueError, FileNotFoundError) as e:
        raise _window_error(e) from None
    rows_plan, keys = plan.build_plan(spec, selection)
    ids, mask = rows_plan.make_batch(np.arange(len(rows_plan)))
    if spec.window_tokenizer:
        texts, _ = data.window_texts(ids, cutter, keep_first=int(spec.add_bos))
        again = data.retokenize(texts, tokenizer, add_bos=spec.add_bos, keys=list(keys))
        ids, mask = again.token_ids, again.attention_mask
    row_of = np.searchsorted(selection.indices, rows_plan.prompt_index)
    labels = getattr(selection, "labels", None)
    return (
        source,
        Rows(
            input_ids=np.asarray(ids, np.int32),
            attention_mask=np.asarray(mask, np.int32),
            prompt_index=rows_plan.prompt_index,
            prompt_key=keys,
            shuffle=rows_plan.shuffle_index,
            repeat=rows_plan.shuffle_repeat,
            label=None if labels is None else np.asarray(labels)[row_of].astype(np.int32),
            class_names=tuple(getattr(selection, "class_names", ())),
        ),
        summary,
    )


def _window_error(e: BaseException) -> UserError:
    """Errors of the window selection, in the run's terms."""
    text = str(e)
    for lib, field in (("num_windows", "num_prompts"), ("window_tokens", "max_tokens")):
        if text.startswith(lib):
            return UserError(
                "{" + field + "} (windows): {problem}", field, problem=text[len(lib) :]
            )
    return checks.wrap(e)


def for_labels(spec: run_spec.RunSpec, rows: Rows) -> run_spec.RunSpec:
    """spec without the observables that read labels when the rows carry none (they came
    with a set such as "dataset"); one named on its own is refused instead."""
    if rows.label is not None:
        return spec
    observables = spec.observable_set
    readers = [o.name for o in observables.observables if LABELS_INPUT in o.consumes]
    named = [n.strip() for n in spec.observables.split(",")]
    asked = [n for n in readers if n in named]
    if asked:
        raise UserError(
            "{observables}: {listed} need(s) labelled rows: {windows} of a labelled dataset "
            "(pydoc topics, or {label_field})",
            ("observables", "windows", "label_field"),
            listed=", ".join(asked),
        )
    if not readers:
        return spec
    logging.info("rows carry no labels: %s left out", ", ".join(readers))
    kept = [n for n in observables.names if n not in readers]
    return spec.replace(observables=",".join(kept))


def clouds_of(spec: run_spec.RunSpec, rows: Rows) -> list[Cloud]:
    """Each (shuffle level, repeat)'s rows, split into ``partitions`` disjoint seeded
    random subsets (sizes differing by at most one), each in row order."""
    out = []
    levels = dict.fromkeys(zip(rows.shuffle.tolist(), rows.repeat.tolist()))
    for s, r in levels:
        members = np.flatnonzero((rows.shuffle == s) & (rows.repeat == r))
        seed = np.random.SeedSequence([spec.seed, 0x9A27, s & 0xFFFFFFFF, r])
        order = np.random.default_rng(seed).permutation(len(members))
        parts = np.array_split(order, spec.partitions) if spec.partitions > 1 else [order]
        for p, part in enumerate(parts):
            out.append(Cloud(int(s), int(r), p, np.sort(members[part])))
    return out


def check_cloud_sizes(spec: run_spec.RunSpec, clouds: list[Cloud]) -> int:
    """The smallest cloud's size, after checking it supports the observables' options."""
    n = min(len(c.rows) for c in clouds)
    observables = spec.observable_set
    if n < 4:
        raise UserError(
            "{partitions}={p} leaves {n} points per cloud; use fewer partitions or more "
            "rows ({num_prompts})",
            ("partitions", "num_prompts"),
            p=spec.partitions,
            n=n,
        )
    try:
        options = observables.options(spec.option_values(), n=n, kind=run_spec.CLOUDS)
        metrics.compute.check_observables(observables, options, n)
    except ValueError as e:
        raise UserError(
            "{problem} (the smallest cloud has {n} points: {num_prompts} rows per level over "
            "{partitions}={p} partitions)",
            ("num_prompts", "partitions"),
            problem=e,
            n=n,
            p=spec.partitions,
        ) from None
    return n


def resolve_options(spec: run_spec.RunSpec, n: int) -> run_spec.RunSpec:
    """spec with the cloud-size dependent options resolved (range_max None: the largest
    the smallest cloud supports, capped at 2**13), as metadata.json records them."""
    changes = {}
    for name, opt in spec.observable_set.declared_options.items():
        if opt.resolve is not None:
            changes[name] = opt.resolve(getattr(spec, name), n, run_spec.CLOUDS)
    return spec.replace(**changes)


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
    spec: run_spec.RunSpec, reps, rows: Rows, clouds: list[Cloud], progress: bool, mesh=None
):
    """Each cloud's observables per layer, on its points read from the store: fields
    [C, L', ...] plus finite and status [C, L]. On a mesh of several devices, each cloud's
    rows are split over its data axis (the row-blocked path)."""
    mesh = mesh if mesh is not None and mesh.size > 1 else None
    observables = spec.observable_set
    options = observables.options(spec.option_values())
    n_max = max(len(c.rows) for c in clouds)
    wants_labels = LABELS_INPUT in {c for o in observables.observables for c in o.consumes}
    written = {f.name for f in results.run_fields(observables, results.CLOUDS)}
    per_cloud = []
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
    for cloud in tqdm(clouds, unit="cloud", disable=not progress, desc="cloud geometry"):
        points = reps.read(cloud.rows)  # [n, L+1, D]
        n = len(cloud.rows)
        hidden = np.zeros((points.shape[1], 1, n_max, points.shape[2]), np.float32)
        hidden[:, 0, :n] = np.moveaxis(points, 0, 1)
        mask = np.zeros((1, n_max), bool)
        mask[0, :n] = True
        inputs = {}
        if wants_labels:
            labels = np.full((1, n_max), -1, np.int32)
            labels[0, :n] = rows.label[cloud.rows]
            inputs[LABELS_INPUT] = labels
        geo = geometry(hidden, mask, inputs)
        per_cloud.append({k: np.asarray(v)[0] for k, v in geo.items() if k in written})
    return {k: np.stack([g[k] for g in per_cloud]) for k in per_cloud[0]}


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


def cloud_arrays(clouds: list[Cloud]) -> dict[str, np.ndarray]:
    return {
        "cloud_shuffle": np.asarray([c.shuffle for c in clouds], np.int32),
        "cloud_repeat": np.asarray([c.repeat for c in clouds], np.int32),
        "cloud_partition": np.asarray([c.partition for c in clouds], np.int32),
        "n_points": np.asarray([len(c.rows) for c in clouds], np.int32),
    }


def log_selection(summary: str, rows: Rows, clouds: list[Cloud]) -> None:
    logging.info("%s; %d rows, %d clouds", summary, len(rows), len(clouds))
