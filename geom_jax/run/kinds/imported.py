"""An imported run: representations computed outside geom-jax (a ``.npy``, ``.npz``,
``.safetensors``, Zarr array, saved Hugging Face dataset or ``torch.save`` file), written
as a pooled run's folder by ``experiments/import_representations.py``
(:mod:`geom_jax.run.importer`).

It reads as a pooled run: one point per row in ``representations.zarr`` [R, L, D] (the
input's hidden states, in its order), the rows in ``tokens.npz`` (``row_prompt_key`` from
the keys given, or the row's index; ``row_label``; shuffle level and repeat 0; no token
ids), and one cloud, every row, in ``results.npz``. Nothing is measured at import.
Comparisons match its rows by key alone (:mod:`geom_jax.run.compare`): it has no text
and no flags to hold against another run's.
"""

from __future__ import annotations

from geom_jax.metrics.declare.observable import IMPORTED, Field
from geom_jax.run.checks import UserError
from geom_jax.run.file_names import TOKENS_FILE
from geom_jax.run.kinds import pooled_sweep
from geom_jax.run.kinds.pooled import Pooled

POINT_FIELDS = (
    Field("row_prompt_index", (), "index of the row in the imported input.", "", "int64"),
    Field("row_prompt_key", (), "the row's key (keys file; its index without one).", "", "str"),
    Field(
        "row_shuffle", (), "shuffle level of the row (0: imported rows are as given).", "", "int32"
    ),
    Field("row_repeat", (), "repeat of the row's shuffle (0).", "", "int32"),
    Field("row_label", (), "class id of the row (labels file).", "", "int32"),
)
"""Every row of an imported run, in tokens.npz (rows in representations.zarr's order)."""


class Imported(Pooled):
    name = IMPORTED
    pools = ("imported",)
    point_fields = POINT_FIELDS
    rows_doc = "C = 1 cloud (every row; nothing is measured at import), R rows (tokens.npz)"
    files_doc = (
        f"Every row is in `{TOKENS_FILE}` (its key, index in the input and label) and its "
        f"points in `{pooled_sweep.STORE}` [R, L, D] (Zarr v3, float32): the input's hidden "
        "states as imported (`metadata.json`'s `imported` says from what)."
    )
    keys_only = True

    def measured_fields(self, observables) -> list[Field]:
        return []

    def report_label(self, metadata, folder: str) -> str:
        source = metadata.get("imported", {}).get("format")
        label = metadata.get("model", folder)
        return f"{label} (imported {source})" if source else f"{label} (imported)"

    def check_options(self, spec, observables) -> None:
        self.check(spec)

    def check(self, spec):
        raise UserError(
            "{pool}=imported is the kind of an imported run: write one with "
            "experiments/import_representations.py",
            "pool",
        )

    def prepare(self, spec, config):
        return self.check(spec)

    def compute(self, prepared, mesh, space):
        return self.check(prepared.spec)


IMPORTED_RUN = Imported()
"""Representations imported from outside geom-jax, read as a pooled run."""
