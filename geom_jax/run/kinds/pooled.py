"""A pooled run (``pool=last`` / ``pool=mean``): one point per row, the rows of each
shuffle level and repeat (and partition) a cloud.

The experiment family of Cheng et al. (ICLR 2025, arXiv 2405.15471: the last token of
20-token sequences, structured and shuffled, GRIDE at scales up to 2**13, 5 partitions),
Valeriani et al. (NeurIPS 2023, the mean over the sequence), Doimo et al. (2024) and Lee et
al. (ACL 2025). Its rows and clouds are chosen in :mod:`pooled_rows`, streamed into
``representations.zarr`` and measured cloud by cloud in :mod:`pooled_sweep`.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax

from geom_jax import models, pipeline
from geom_jax.metrics.declare import registry
from geom_jax.metrics.declare.observable import POOLED, Field
from geom_jax.pipeline import schema
from geom_jax.run import checks, model, output_dir
from geom_jax.run import spec as run_spec
from geom_jax.run.checks import UserError
from geom_jax.run.file_names import TOKENS_FILE
from geom_jax.run.kinds import pooled_rows, pooled_sweep
from geom_jax.run.run_kind import Computed, RunKind

CLOUD_FIELDS = (
    Field(
        "cloud_shuffle",
        (),
        "shuffle level s of the cloud's rows (-1: every token permuted).",
        "",
        "int32",
    ),
    Field(
        "cloud_repeat", (), "repeat r of their shuffle (0 for the structured rows).", "", "int32"
    ),
    Field(
        "cloud_partition",
        (),
        "partition p = 0..P-1 of the level's rows (partitions=P).",
        "",
        "int32",
    ),
    Field("n_points", (), "points of the cloud (its rows).", "", "int32"),
)
"""What each row of a pooled run's results is (one measured cloud): coordinates along cloud."""

POINT_FIELDS = (
    Field("input_ids", ("position",), "the row's token ids as run (after shuffling).", "", "int32"),
    Field("attention_mask", ("position",), "1 on the row's tokens (0: padding).", "", "int32"),
    Field(
        "row_prompt_index", (), "index of the row's window (or prompt) in the dataset.", "", "int64"
    ),
    Field("row_prompt_key", (), "stable id of the window: '<document key>:w<j>'.", "", "str"),
    Field("row_shuffle", (), "shuffle level s of the row.", "", "int32"),
    Field("row_repeat", (), "repeat r of the row's shuffle.", "", "int32"),
    Field("row_label", (), "class id of the row (its document, or label_field).", "", "int32"),
    Field(
        "row_loss", (), "mean next-token negative log-likelihood of the row (nats).", "", "float32"
    ),
)
"""Every row of a pooled run, in tokens.npz (rows in representations.zarr's order)."""


@dataclasses.dataclass(frozen=True)
class Prepared:
    spec: run_spec.RunSpec
    source: object
    rows: pooled_rows.Rows
    clouds: list[pooled_rows.Cloud]
    summary: str


class Pooled(RunKind):
    name = POOLED
    pools = ("last", "mean")
    default_observables = "pooled"
    row_dim = "cloud"
    row_symbol = "C"
    row_fields = CLOUD_FIELDS
    point_fields = POINT_FIELDS
    point_coordinates = (
        "row_prompt_index",
        "row_prompt_key",
        "row_shuffle",
        "row_repeat",
        "row_label",
    )
    report_rows = {
        "shuffle_index": "cloud_shuffle",
        "prompt_index": "cloud_partition",
        "shuffle_repeat": "cloud_repeat",
    }
    """The report reads a cloud as a row: its level, and its partition as the prompt (so
    that a band over rows is the spread over partitions)."""
    rows_doc = "C clouds (shuffle level x repeat x partition), R rows (one point each; tokens.npz)"
    per_process_state = False
    """Its store reads the same whoever wrote it: a killed run resumes under any
    process count."""
    keys_only = False
    """Whether comparisons match this kind's rows by key alone (rows from outside geom-jax,
    with no text or flags to check; :func:`geom_jax.run.compare.match_rows`)."""
    files_doc = (
        f"Every row is in `{TOKENS_FILE}` (its ids as run, what it is, its loss) and its "
        f"pooled hidden states in `{pooled_sweep.STORE}` [R, L+1, D] (Zarr v3, float32)."
    )

    def measured_fields(self, observables) -> list[Field]:
        fields = [f for f in observables.fields(saved_only=True) if not f.tokens]
        return fields + list(schema.health_fields(observables))

    def measured_point_fields(self, observables="paper") -> list[Field]:
        observables = registry.resolve(observables)
        return [f.per_row() for f in observables.fields(saved_only=True) if f.tokens]

    def report_label(self, metadata, folder: str) -> str:
        pool = metadata.get("flags", {}).get("pool", "")
        return f"{super().report_label(metadata, folder)} (one point per window, {pool} token)"

    def check_options(self, spec, observables) -> None:
        observables.options(spec.option_values())  # the sizes are known once the rows are

    def check(self, spec):
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
            raise UserError(
                "{label_field} labels windows: add {windows}", ("label_field", "windows")
            )
        if spec.window_tokenizer and not spec.windows:
            raise UserError(
                "{window_tokenizer} cuts windows: add {windows}", ("window_tokenizer", "windows")
            )
        if spec.filter_models:
            raise UserError(
                "{filter_models} applies to prompts kept whole, not to pooled runs",
                "filter_models",
            )
        return spec

    def prepare(self, spec, config) -> Prepared:
        source, rows, summary = pooled_rows.select_rows(spec, model.tokenizer(spec))
        checks.check_token_ids(rows.input_ids, config.vocab_size, spec.model)
        spec = pooled_rows.for_labels(spec, rows)
        clouds = pooled_rows.clouds_of(spec, rows)
        spec = pooled_rows.for_host_inputs(spec, rows, clouds)
        n = pooled_rows.check_cloud_sizes(spec, clouds)
        pooled_rows.log_selection(summary, rows, clouds)
        return Prepared(checks.resolved(spec, n), source, rows, clouds, summary)

    def compute(self, prepared: Prepared, mesh, space) -> Computed:
        spec, rows, clouds = prepared.spec, prepared.rows, prepared.clouds
        out = spec.output_dir
        rules = models.fsdp_rules() if spec.fsdp else None
        decoder, random_init = model.load_model(spec, mesh, rules)
        pipe = pipeline.PooledPipeline(
            decoder, pool=spec.pool, skip_first=spec.add_bos, mesh=mesh, rules=rules
        )
        geometry = pooled_sweep.CloudGeometry.plan(spec, rows, clouds, mesh)
        geometry.check(pipe.layers, pipe.dim)
        space.bytes = int(1.2 * len(rows) * pipe.layers * pipe.dim * 4) + (1 << 24)
        output_dir.check_free_space(out, space.bytes, os.path.join(out, pooled_sweep.STORE))
        if jax.process_index() == 0:
            output_dir.record_run_config(spec)
        t_compute = time.time()
        reps, losses = pooled_sweep.open_stores(
            out, len(rows), pipe.layers, pipe.dim, spec.batch_size * spec.checkpoint_every
        )
        pooled_sweep.pooled_sweep(
            pipe, rows, reps, losses, batch_size=spec.batch_size, progress=spec.progress
        )
        written = {f.name for f in self.fields(spec.observable_set)}
        per_row = [f for f in spec.observable_set.fields(saved_only=True) if f.tokens]
        geo, geo_rows = geometry.measure(reps, written, spec.progress, per_row)
        arrays = {
            **pooled_rows.cloud_arrays(clouds),
            **geo,
            **geo_rows,
            **pooled_sweep.row_arrays(rows, losses),
        }
        return Computed(
            arrays,
            len(rows),
            prepared.source,
            decoder,
            random_init,
            time.time() - t_compute,
            metadata={
                "selection": prepared.summary,
                "num_clouds": len(clouds),
                "class_names": list(rows.class_names),
            },
        )


POOLED_RUN = Pooled()
