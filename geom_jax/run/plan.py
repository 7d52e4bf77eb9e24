"""The rows of a run: every prompt at every shuffle level and repeat, in sweep order."""

from __future__ import annotations

import numpy as np

from geom_jax import data
from geom_jax.run import spec as run_spec
from geom_jax.run.sweep import SweepPlan


def row_levels(spec: run_spec.RunSpec) -> tuple[np.ndarray, np.ndarray]:
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


def build_plan(spec: run_spec.RunSpec, selection: data.PromptSelection):
    """(SweepPlan, prompt keys [rows]): every prompt at every shuffle level and repeat."""
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

    plan = SweepPlan(
        prompt_index=selection.indices[row_prompt],
        shuffle_index=row_shuffle.astype(np.int32),
        make_batch=make_batch,
        shuffle_repeat=row_repeat.astype(np.int32),
    )
    keys = np.asarray([selection.keys[p] for p in row_prompt])
    return plan, keys


def local_plan(plan: SweepPlan, rows: np.ndarray) -> SweepPlan:
    """The rows of ``plan`` this process supplies (global row ids ``rows``)."""
    return SweepPlan(
        prompt_index=plan.prompt_index[rows],
        shuffle_index=plan.shuffle_index[rows],
        make_batch=lambda local: plan.make_batch(rows[local]),
        shuffle_repeat=plan.shuffle_repeat[rows],
    )
