"""A per-prompt run (``pool=none``): each prompt's tokens are a cloud, at every shuffle
level and repeat (the paper's experiment, Viswanathan et al. 2025, arXiv 2501.10573).

The prompts are selected and tokenised, the sweep lists every prompt at every level
(:mod:`geom_jax.run.plan`), and the fused :class:`~geom_jax.pipeline.GeometryPipeline`
(forward + every observable) streams it in static-shape batches with verified
checkpoints (:mod:`geom_jax.run.sweep`), its rows split over processes
(:mod:`geom_jax.run.distributed`).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
from absl import logging

from geom_jax import data, metrics, models, pipeline
from geom_jax.metrics.declare.observable import PER_PROMPT, Field
from geom_jax.pipeline import schema
from geom_jax.run import checks, distributed, model, output_dir, plan, sweep
from geom_jax.run import spec as run_spec
from geom_jax.run.file_names import TOKENS_FILE
from geom_jax.run.run_kind import ROW_DIM, Computed, RunKind

ROW_FIELDS = (
    Field(
        "prompt_index",
        (),
        "index of the row's prompt in the dataset (see prompt_key).",
        "",
        "int64",
    ),
    Field(
        "prompt_key",
        (),
        "stable id of the prompt (pydoc topic, file name, line or row).",
        "",
        "str",
    ),
    Field(
        "shuffle_index",
        (),
        "shuffle level s: 4**s blocks permuted (0 = structured prompt; -1 = every token "
        "permuted, method=permuted).",
        "",
        "int32",
    ),
    Field(
        "shuffle_repeat",
        (),
        "repeat r = 0..R-1 of the row's shuffle (shuffle_repeats=R; 0 for the structured prompt).",
        "",
        "int32",
    ),
)
"""What each row of a per-prompt run is: coordinates along the row dim."""


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


@dataclasses.dataclass(frozen=True)
class Prepared:
    spec: run_spec.RunSpec
    config: models.DecoderConfig


class PerPrompt(RunKind):
    name = PER_PROMPT
    pools = ("none",)
    default_observables = "paper"
    row_dim = ROW_DIM
    row_symbol = "P"
    row_fields = ROW_FIELDS
    rows_doc = "P rows (prompt x shuffle level)"
    files_doc = f"Per-token fields are in `{TOKENS_FILE}` (float16): `np.load` it the same way."

    def measured_fields(self, observables) -> list[Field]:
        return schema.result_fields(observables)

    def check_options(self, spec, observables) -> None:
        n = checks.num_tokens(spec)
        options = observables.options(spec.option_values(), n=n, kind=self.name)
        metrics.compute.check_observables(observables, options, n)

    def check(self, spec):
        return checks.resolved(spec, checks.num_tokens(spec))

    def prepare(self, spec, config) -> Prepared:
        return Prepared(spec, config)

    def compute(self, prepared: Prepared, mesh, space) -> Computed:
        spec, config = prepared.spec, prepared.config
        out = spec.output_dir
        observables = spec.observable_set
        source, selection = select(spec, model.tokenizer(spec))
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
        decoder, random_init = model.load_model(spec, mesh, rules)
        try:
            pipe = pipeline.GeometryPipeline(
                decoder,
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
        compute_s = time.time() - t_compute
        arrays = {
            "prompt_index": rows_plan.prompt_index,
            "prompt_key": keys,
            "shuffle_index": rows_plan.shuffle_index,
            "shuffle_repeat": rows_plan.shuffle_repeat,
            **distributed.gather_rows(len(rows_plan), rows, store.arrays),
        }
        return Computed(arrays, len(rows_plan), source, decoder, random_init, compute_s)


PER_PROMPT_RUN = PerPrompt()
