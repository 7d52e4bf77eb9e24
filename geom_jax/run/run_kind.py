"""The kind of a run, as one object: what its rows are, how they are chosen, computed and
measured, which fields its files hold and how the report reads them.

Two kinds are built in (:mod:`geom_jax.run.kinds`): per-prompt runs, where each prompt's
tokens are a cloud (``pool=none``), and pooled runs, one point per row (its last token or
the mean over its tokens) and the rows of each shuffle level (and partition) a cloud
(``pool=last`` / ``pool=mean``). The runner, the result files
(:mod:`geom_jax.results`) and the report (:mod:`geom_jax.report`) read a kind only through
this protocol; a kind is registered once and chosen by the run's ``pool`` (or, for a
finished run, by the ``pool`` its ``metadata.json`` records).

The pattern is scikit-learn's ``algorithm=`` for its neighbour backends: one interface,
the implementation picked by one field.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any

from geom_jax.metrics.declare import registry
from geom_jax.metrics.declare.observable import Field

ROW_DIM = "row"
"""The dim of the rows a run computed (prompts x shuffle levels, or a pooled run's points)."""


@dataclasses.dataclass
class Computed:
    """What a kind's :meth:`RunKind.compute` hands back to the runner to write.

    Attributes:
      arrays: every field of the run's files, row fields included, as computed.
      num_rows: rows the run computed (metadata.json's ``num_rows``).
      source: the prompt source (its description goes to metadata.json).
      model: the model that ran.
      random_init: the random weights' record, or None for trained weights.
      compute_s: seconds of compute (forwards and metrics).
      metadata: entries the kind adds to metadata.json.
    """

    arrays: dict[str, Any]
    num_rows: int
    source: Any
    model: Any
    random_init: dict | None
    compute_s: float
    metadata: dict = dataclasses.field(default_factory=dict)


class RunKind(abc.ABC):
    """One kind of run. Subclasses declare the class attributes and implement the steps.

    Attributes:
      name: the kind's name (``metrics.declare.observable.PER_PROMPT`` / ``POOLED``), as
        observables' options and report sections name it.
      pools: the values of the run's ``pool`` field that select it.
      default_observables: the observable set measured when none is asked for.
      row_dim: the first dim of ``results.npz``'s fields in ``results.load``.
      row_symbol: that dim's symbol in the docs' shapes (``[P, L]``).
      row_fields: what each row of ``results.npz`` is (coordinates along ``row_dim``).
      point_fields: per-point fields a kind writes to ``tokens.npz`` (along ``row``).
      point_coordinates: those of the point fields that are coordinates in ``results.load``.
      report_rows: the report's row fields (``shuffle_index``, ``prompt_index``,
        ``shuffle_repeat``) -> the field of this kind's files that the report reads as it.
      rows_doc: what the rows of ``results.npz`` are, for ``RESULTS.md``.
      files_doc: where the rest of the run is, for ``RESULTS.md``.
      per_process_state: whether what a killed run leaves depends on its process count
        (per-prompt checkpoints hold each process's rows), so that ``--resume`` under
        another count is refused; a pooled run's store does not.
    """

    name: str
    pools: tuple[str, ...]
    default_observables: str
    row_dim: str
    row_symbol: str
    row_fields: tuple[Field, ...]
    point_fields: tuple[Field, ...] = ()
    point_coordinates: tuple[str, ...] = ()
    report_rows: Mapping[str, str] = {}
    rows_doc: str
    files_doc: str
    per_process_state: bool = True

    def __repr__(self):
        return f"<run kind {self.name}>"

    # Declarations read by the files and the report.

    @abc.abstractmethod
    def measured_fields(self, observables) -> list[Field]:
        """The fields of ``results.npz`` (and per-token ones of ``tokens.npz``) that the
        run's observables, model and health checks add to the row fields."""

    def fields(self, observables="paper") -> list[Field]:
        """Every field of a run of ``observables`` but the point fields, in file order."""
        return list(self.row_fields) + self.measured_fields(registry.resolve(observables))

    def measured_point_fields(self, observables="paper") -> list[Field]:
        """The observables' per-point fields that this kind stores along ``row`` in
        ``tokens.npz`` (a pooled run's: one point per row); none by default."""
        return []

    def tokens_fields(self, observables="paper") -> set[str]:
        """The fields written to ``tokens.npz``: the point fields, the per-token ones
        (float16 there) and the measured point fields."""
        return (
            {f.name for f in self.point_fields}
            | {f.name for f in self.fields(observables) if f.tokens}
            | {f.name for f in self.measured_point_fields(observables)}
        )

    def report_arrays(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        """A finished run's arrays with the report's row fields added (``report_rows``)."""
        out = dict(arrays)
        for field, mine in self.report_rows.items():
            out[field] = arrays[mine]
        return out

    def report_label(self, metadata: Mapping, folder: str) -> str:
        """The name of a finished run in the report (its model, by default)."""
        return metadata.get("model", folder)

    # The steps of a run, in the runner's order.

    @abc.abstractmethod
    def check_options(self, spec, observables) -> None:
        """Checks the observables' options against what is known before any file is read
        (raising the run's UserError)."""

    @abc.abstractmethod
    def check(self, spec):
        """The kind's own checks of ``spec`` (no file read); returns the spec to run."""

    @abc.abstractmethod
    def prepare(self, spec, config):
        """What is read and checked before the output folder is touched (a prepared object
        whose ``spec`` is the spec to run, its options resolved)."""

    @abc.abstractmethod
    def compute(self, prepared, mesh, space) -> Computed:
        """The run's compute, under the output folder's lock: model, rows, sweep (resuming
        what is checkpointed) and measurement. ``space`` (output_dir.SpaceNeeded) is set to
        the bytes the run will write, for the disk-full error."""


_KINDS: dict[str, RunKind] = {}


def register(kind: RunKind) -> RunKind:
    """Adds a kind of run (ValueError when its name or one of its pools is taken)."""
    for other in _KINDS.values():
        if other.name == kind.name or set(other.pools) & set(kind.pools):
            raise ValueError(f"{kind!r} clashes with {other!r} (name or pools)")
    _KINDS[kind.name] = kind
    return kind


def kinds() -> tuple[RunKind, ...]:
    """The registered kinds, in registration order."""
    if not _KINDS:
        raise RuntimeError("no kind of run is registered: import geom_jax.run.kinds")
    return tuple(_KINDS.values())


def of_pool(pool: str | None, default: RunKind | None = None) -> RunKind:
    """The kind a run's ``pool`` selects (ValueError naming ``pool`` when none does, unless
    a default is given)."""
    pool = "none" if pool is None else pool
    for kind in kinds():
        if pool in kind.pools:
            return kind
    if default is not None:
        return default
    known = [p for k in kinds() for p in k.pools]
    raise ValueError(f"pool must be one of {known}, got {pool!r}")


def of_metadata(metadata: Mapping) -> RunKind:
    """The kind of a finished run, from the ``pool`` its ``metadata.json`` records (runs
    that predate the field, and files written without metadata, are per-prompt runs)."""
    return of_pool(metadata.get("flags", {}).get("pool"))
