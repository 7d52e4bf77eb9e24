"""The rows and clouds of a pooled run: every window (or prompt) at every shuffle level
and repeat, with its label, and the clouds cut from them (a shuffle level and repeat, split
into seeded random partitions: Cheng et al., ICLR 2025, arXiv 2405.15471)."""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from geom_jax import data, metrics, models
from geom_jax.metrics.declare import registry
from geom_jax.metrics.declare.observable import POOLED
from geom_jax.run import checks, plan
from geom_jax.run import spec as run_spec
from geom_jax.run.checks import UserError

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


def named(spec: run_spec.RunSpec) -> set[str]:
    """The observables of spec asked for by name: all of them, but those of the "pooled"
    set when the spec holds that whole set (its default; ``spec.observables`` holds the
    set's names, not its name, so an observable of the set cannot be told apart from
    the set there)."""
    names = set(spec.observable_set.names)
    default = set(registry.resolve("pooled").names)
    return names - default if default <= names else names


def for_labels(spec: run_spec.RunSpec, rows: Rows) -> run_spec.RunSpec:
    """spec without the observables that read labels when the rows carry none (they came
    with a set such as "pooled"); one named on its own is refused instead."""
    if rows.label is not None:
        return spec
    observables = spec.observable_set
    readers = [o.name for o in observables.observables if LABELS_INPUT in o.consumes]
    asked = [n for n in readers if n in named(spec)]
    if asked:
        raise UserError(
            "{observables}: {listed} need(s) labelled rows: {windows} of a labelled dataset "
            "(pydoc topics, or {label_field})",
            ("observables", "windows", "label_field"),
            listed=", ".join(asked),
        )
    if readers:
        logging.info("rows carry no labels: %s left out", ", ".join(readers))
    return _without(spec, readers)


def _without(spec: run_spec.RunSpec, dropped) -> run_spec.RunSpec:
    """spec measuring its observables but ``dropped`` (spec itself when none is)."""
    if not dropped:
        return spec
    kept = [n for n in spec.observable_set.names if n not in dropped]
    return spec.replace(observables=",".join(kept))


def cloud_inputs(
    spec: run_spec.RunSpec, rows: Rows, clouds: list[Cloud], observables=None, width=None
):
    """The per-point inputs of every cloud, [clouds, n_max] padded to the largest (or to
    ``width``): the row labels (-1 at padding) when an observable reads them, and what
    the observables derive from them on the host (``metrics.compute.host_inputs``, in one
    batch so that their static sizes are the run's). observables: the spec's set by
    default."""
    observables = spec.observable_set if observables is None else observables
    if not any(LABELS_INPUT in o.consumes for o in observables.observables):
        return {}
    n_max = max([len(c.rows) for c in clouds] + [width or 0])
    labels = np.full((len(clouds), n_max), -1, np.int32)
    mask = np.zeros((len(clouds), n_max), bool)
    for i, cloud in enumerate(clouds):
        labels[i, : len(cloud.rows)] = rows.label[cloud.rows]
        mask[i, : len(cloud.rows)] = True
    options = observables.options(spec.option_values())
    return metrics.compute.host_inputs(observables, {LABELS_INPUT: labels}, mask, options, n_max)


def for_host_inputs(spec: run_spec.RunSpec, rows: Rows, clouds: list[Cloud]) -> run_spec.RunSpec:
    """spec without the observables, come with the "pooled" set, whose host inputs
    refuse the clouds' rows (e.g. probes with a class of fewer rows than probe_folds in
    a cloud: with the labels of short runs, often), logged; one named on its own (see
    :func:`named`) is refused instead, before any compute."""
    asked = named(spec)
    dropped = []
    for obs in spec.observable_set.observables:
        if obs.host_inputs is None or (LABELS_INPUT in obs.consumes and rows.label is None):
            continue
        try:
            cloud_inputs(spec, rows, clouds, registry.resolve(obs.name))
        except ValueError as e:
            if obs.name in asked:
                raise UserError(
                    "{observables}: {name} cannot measure these clouds (cloud c: the c-th "
                    "of results.npz's cloud axis): {problem}",
                    "observables",
                    name=obs.name,
                    problem=e,
                ) from None
            logging.warning("%s left out: %s", obs.name, e)
            dropped.append(obs.name)
    return _without(spec, dropped)


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
        options = observables.options(spec.option_values(), n=n, kind=POOLED)
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


def cloud_arrays(clouds: list[Cloud]) -> dict[str, np.ndarray]:
    return {
        "cloud_shuffle": np.asarray([c.shuffle for c in clouds], np.int32),
        "cloud_repeat": np.asarray([c.repeat for c in clouds], np.int32),
        "cloud_partition": np.asarray([c.partition for c in clouds], np.int32),
        "n_points": np.asarray([len(c.rows) for c in clouds], np.int32),
    }


def log_selection(summary: str, rows: Rows, clouds: list[Cloud]) -> None:
    logging.info("%s; %d rows, %d clouds", summary, len(rows), len(clouds))
