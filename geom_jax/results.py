"""The files a run leaves, and loading them: ``results.npz``, ``tokens.npz``,
``metadata.json``, ``RESULTS.md``.

``geom_jax.results.load(DIR)`` returns an ``xarray.Dataset`` with named dims
(row, layer, scale, k, token, ...) and coordinates (``prompt_key``,
``shuffle_index``, ``gride_n1``, ...), all derived from the observables'
declarations; ``np.load(DIR/results.npz)`` gives the same arrays unlabelled.
Files are written to a temporary name and renamed, so a killed run never
leaves a half-written file; ``results.npz.sha256`` holds the file's SHA-256,
a damaged file is refused on load and ``--resume`` rebuilds it from the
checkpoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from geom_jax.io import files, integrity
from geom_jax.metrics.declare import registry
from geom_jax.metrics.declare.observable import DIMS, LAYER_AXES, Field, layer_coords
from geom_jax.pipeline import schema
from geom_jax.run import file_names, run_kind
from geom_jax.run.kinds import PER_PROMPT_RUN

RESULTS_FILE = file_names.RESULTS_FILE
METADATA_FILE = file_names.METADATA_FILE
RUN_CONFIG_FILE = file_names.RUN_CONFIG_FILE
README_FILE = file_names.README_FILE
TOKENS_FILE = file_names.TOKENS_FILE

ROW_DIM = run_kind.ROW_DIM


def _kind(kind: run_kind.RunKind | None) -> run_kind.RunKind:
    return kind if kind is not None else PER_PROMPT_RUN


def coordinate_fields(fields: Sequence[Field]) -> dict[str, str]:
    """Coordinates stored beside the fields (e.g. gride_n1 of the scale dim): name -> doc."""
    out = {}
    for f in fields:
        for d in f.dims:
            dim = DIMS.get(d)
            if dim is not None and dim.coord_name:
                out.setdefault(dim.coord_name, f"[{dim.symbol}] {dim.doc}.")
    return out


def field_docs(observables="paper", kind: run_kind.RunKind | None = None) -> dict[str, str]:
    """Field name -> "[shape] meaning" of a run of ``kind`` (per-prompt by default)
    measuring ``observables``, derived from the declarations (per-token fields live in
    tokens.npz; a pooled run's rows too)."""
    kind = _kind(kind)
    fields = kind.fields(observables)
    docs = {}
    for f in fields:
        where = f" ({TOKENS_FILE}, {f.stored_dtype})" if f.tokens else ""
        docs[f.name] = f"{f.shape(kind.row_symbol)} {f.doc}{where}"
    docs.update(coordinate_fields(fields))
    for f in list(kind.point_fields) + kind.measured_point_fields(observables):
        docs[f.name] = f"{f.shape('R')} {f.doc} ({TOKENS_FILE})"
    return docs


def field_table(observables="paper", *, beyond: str | None = None) -> str:
    """The markdown table (field, shape, meaning) of a run's files, from the declarations;
    with ``beyond``, only the fields that set adds to it (the README's two tables)."""
    docs = field_docs(observables)
    if beyond is not None:
        base = field_docs(beyond)
        docs = {k: v for k, v in docs.items() if k not in base}
    lines = ["| field | shape | meaning |", "| --- | --- | --- |"]
    for name, doc in docs.items():
        shape, _, meaning = doc.partition("] ")
        lines.append(f"| `{name}` | {shape}] | {meaning} |")
    return "\n".join(lines)


def readme_tables() -> str:
    """The README's field tables: the paper's set, then what every other observable adds
    (``python -c "from geom_jax import results; print(results.readme_tables())"``)."""
    everything = ",".join(registry.known()[2:])
    return field_table("paper") + "\n\n" + field_table(everything, beyond="paper")


def coordinates(arrays: Mapping[str, np.ndarray], fields: Sequence[Field]) -> dict:
    """The stored coordinates (e.g. gride_n1 = 2**j) of the dims the fields use."""
    out = {}
    for f in fields:
        if f.name not in arrays:
            continue
        shape = np.shape(arrays[f.name])[1 + bool(f.layers) :]
        for d, size in zip(f.dims, shape):
            dim = DIMS.get(d)
            if dim is not None and dim.coord_name and dim.coord_name not in out:
                out[dim.coord_name] = np.asarray(dim.coords(size))
    return out


def as_saved(arrays: Mapping[str, np.ndarray], observables="paper", kind=None):
    """``arrays`` as the files hold them: each field in its declared dtype (per-token
    fields float32 here, float16 in tokens.npz), plus the coordinates its dims store."""
    kind = _kind(kind)
    fields = {
        f.name: f
        for f in kind.fields(observables)
        + list(kind.point_fields)
        + kind.measured_point_fields(observables)
    }
    out = {}
    for name, value in arrays.items():
        f = fields.get(name)
        if f is None or f.dtype == "str":
            out[name] = np.asarray(value)
        else:
            half = f.stored_dtype == np.float16
            out[name] = np.asarray(value, np.float32 if half else f.stored_dtype)
    out.update(coordinates(out, list(fields.values())))
    return out


def save_results(
    output_dir: str, arrays: Mapping[str, np.ndarray], observables="paper", kind=None
) -> str:
    """Writes ``results.npz`` (uncompressed, one array per field, each in its declared
    dtype, with the coordinates its dims store), ``tokens.npz`` (the per-token fields as
    float16; a pooled run's per-row fields) and ``RESULTS.md``, each atomically; each npz
    is followed by its SHA-256 (``results.npz.sha256``). ``kind``: the run's
    (:mod:`geom_jax.run.kinds`; per-prompt by default)."""
    kind = _kind(kind)
    arrays = as_saved(arrays, observables, kind)
    docs = field_docs(observables, kind)
    unknown = set(arrays) - set(docs)
    if unknown:
        raise ValueError(f"save_results: undocumented fields {sorted(unknown)}")
    to_tokens = kind.tokens_fields(observables)
    per_token = {f.name for f in kind.fields(observables) if f.stored_dtype == np.float16}
    main = {k: v for k, v in arrays.items() if k not in to_tokens}
    tokens = {
        k: np.asarray(v, np.float16) if k in per_token else v
        for k, v in arrays.items()
        if k in to_tokens
    }
    path = os.path.join(output_dir, RESULTS_FILE)
    files.atomic_write_bytes(path, files.npz_bytes(main))
    integrity.write_sidecar(path)
    if tokens:
        tokens_path = os.path.join(output_dir, TOKENS_FILE)
        files.atomic_write_bytes(tokens_path, files.npz_bytes(tokens))
        integrity.write_sidecar(tokens_path)
    readme = _readme(arrays, docs, observables, kind)
    files.atomic_write_bytes(os.path.join(output_dir, README_FILE), readme.encode())
    return path


def results_problem(output_dir: str) -> str | None:
    """None when ``results.npz`` (and ``tokens.npz``, when written) match their
    recorded SHA-256, else what is wrong."""
    for name in (RESULTS_FILE, TOKENS_FILE):
        path = os.path.join(output_dir, name)
        if name == TOKENS_FILE and not os.path.isfile(path):
            continue
        problem = integrity.sidecar_problem(path)
        if problem:
            return problem
    return None


class DamagedResultsError(ValueError):
    """``results.npz`` or ``tokens.npz`` does not match the hash recorded when it was written."""


def load_results(output_dir: str) -> dict[str, np.ndarray]:
    """All arrays of a finished run (per-token fields as float32), plus its metadata
    under ``"metadata"``.

    Raises:
      FileNotFoundError: no ``results.npz`` in ``output_dir``.
      DamagedResultsError: results.npz or tokens.npz does not match its
        ``.sha256`` (files of runs that predate the hash load unchecked).
    """
    path = os.path.join(output_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no results here (has the run finished?)")
    if os.path.isfile(path + integrity.SIDECAR_SUFFIX):
        problem = results_problem(output_dir)
        if problem:
            raise DamagedResultsError(problem)
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    tokens_path = os.path.join(output_dir, TOKENS_FILE)
    if os.path.isfile(tokens_path):
        with np.load(tokens_path) as z:
            out.update(
                {k: z[k].astype(np.float32) if z[k].dtype == np.float16 else z[k] for k in z.files}
            )
    meta_path = os.path.join(output_dir, METADATA_FILE)
    out["metadata"] = files.read_json(meta_path) if os.path.isfile(meta_path) else {}
    return out


def declared_fields() -> dict[str, Field]:
    """Every field any registered observable, the model or the health checks declare."""
    out = {f.name: f for kind in run_kind.kinds() for f in kind.row_fields + kind.point_fields}
    for f in schema.result_fields("all"):
        out[f.name] = f
    for obs in registry.REGISTRY.values():
        for f in obs.fields:
            out.setdefault(f.name, f)
    return out


def _observables_of(meta: Mapping) -> str:
    """The observables a finished run measured (its flags), those of "paper" when the
    metadata predate them or name one no longer registered."""
    names = meta.get("flags", {}).get("observables") or "paper"
    try:
        return registry.resolve(names)
    except ValueError:
        return registry.resolve("paper")


def _attr(value):
    return value if isinstance(value, (str, int, float, bool)) else json.dumps(value)


def load(output_dir: str) -> xr.Dataset:
    """A finished run as an ``xarray.Dataset`` with named dims, in one call.

    Every data variable equals the array of the same name in ``results.npz`` (per-token
    fields: ``tokens.npz``, as float32). Dims come from the declarations: ``row``, the
    layer axis (``layer`` 1..L, ``layer_pair`` l for the pair (l, l+1), ``hidden_state``
    0..L with the embedding output first), then ``scale``, ``k``, ``token``, ...; the row
    fields (``prompt_key``, ``prompt_index``, ``shuffle_index``, ``shuffle_repeat``) and
    stored coordinates (``gride_n1``) are coordinates; ``metadata.json`` gives the
    attributes (nested values as JSON text). ``ds.to_dataframe()`` (or
    ``ds[["gride_ids"]].to_dataframe()``) gives the tidy long table.

    Example::

        ds = geom_jax.results.load("results/smollm2-135m_pydoc/structured")
        ds.gride_ids.sel(layer=12).mean("row")
        df = ds[["twonn"]].to_dataframe().reset_index()   # row, layer, twonn, prompt_key, ...

    Raises:
      FileNotFoundError, DamagedResultsError: as :func:`load_results`.
    """
    registry.discover()
    arrays = load_results(output_dir)
    meta = arrays.pop("metadata")
    kind = run_kind.of_metadata(meta)
    declared = declared_fields()
    per_row = {f.name: f for f in kind.measured_point_fields(_observables_of(meta))}
    declared.update(per_row)
    points = {f.name for f in kind.point_fields} | set(per_row)
    row_coords = {f.name for f in kind.row_fields} | set(kind.point_coordinates)
    coord_names = {d.coord_name: name for name, d in DIMS.items() if d.coord_name}
    data_vars, coords = {}, {}
    sizes: dict[str, int] = {}
    for name, value in arrays.items():
        if name in coord_names:
            coords[name] = (coord_names[name], value)
            continue
        f = declared.get(name)
        first = ROW_DIM if name in points else kind.row_dim
        dims = (
            f.dim_names(first)
            if f is not None and len(f.dim_names(first)) == value.ndim
            else (first,) + tuple(f"{name}_dim{i}" for i in range(1, value.ndim))
        )
        for d, size in zip(dims, value.shape):
            sizes.setdefault(d, size)
        if name in row_coords:
            coords[name] = (dims, value)
        else:
            data_vars[name] = (dims, value)
    for layers, (dim, _) in LAYER_AXES.items():
        if dim in sizes:
            coords[dim] = (dim, layer_coords(layers, sizes[dim]))
    for name, dim in DIMS.items():
        if name in sizes and not dim.coord_name and dim.coords is not None:
            coords[name] = (name, dim.coords(sizes[name]))
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs = {k: _attr(v) for k, v in meta.items()}
    for name in data_vars:
        f = declared.get(name)
        if f is not None:
            ds[name].attrs["doc"] = f.doc
    return ds


def _readme(arrays, docs: Mapping[str, str], observables, kind: run_kind.RunKind) -> str:
    observables = registry.resolve(observables)
    rows = kind.rows_doc
    lines = [
        "# Results of a geom-jax run",
        "",
        "```python",
        "import geom_jax.results",
        'ds = geom_jax.results.load(".")   # xarray.Dataset with named dims',
        "import numpy as np",
        'r = np.load("results.npz")         # the same arrays, unlabelled',
        "```",
        "",
        f"{rows}, L transformer layers, S GRIDE scales,",
        "K neighbourhood sizes, T tokens. `metadata.json` records the model,",
        "its checkpoint, the flags, package versions, git commit, device and wall time.",
        kind.files_doc,
        "",
        "| field | shape here | meaning |",
        "| --- | --- | --- |",
    ]
    for name, doc in docs.items():
        if name in arrays:
            lines.append(f"| `{name}` | {list(np.shape(arrays[name]))} | {doc} |")
    lines += ["", f"Observables measured: `{observables.canonical or 'none'}`.", ""]
    lines.append(registry.describe(observables.names))
    return "\n".join(lines) + "\n"
