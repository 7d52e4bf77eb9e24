"""``representations.zarr``: pooled hidden states [rows, L+1, D] on disk, resumable.

One Zarr v3 array (tensorstore's ``zarr3`` driver; zarr-python 3 opens it with
``zarr.open(path)``, its own default format), float32, chunked along rows only
(``chunk_rows`` rows x all hidden states x all features per chunk file
``c/<i>/0/0``), stored raw (the ``bytes`` codec, little-endian, no
compression: SmolLM2's last-token hidden states of clouds_reference.npz shrink
to 93% with zlib and 88% with blosc-zstd + byte shuffle, and raw chunks are
byte-identical between runs and library versions). Unwritten rows read as NaN
(the fill value).

Integrity: after each :meth:`RepresentationStore.write_rows` has committed its
chunks (tensorstore's file driver writes each chunk to ``<file>.__lock`` and
renames it into place; a lock file a kill leaves is reused by the chunk's rewrite),
the size and SHA-256 of each chunk file are recorded in ``geom_jax_chunks.json``
inside the store, written atomically (:func:`geom_jax.files.write_json`).

Several processes write one store by chunks: each opens it with its ``writer`` index,
writes only its own chunks and records them in its own part of the manifest
(``geom_jax_chunks.writer-<i>.json``), so no two processes ever write one file; one
process then folds the parts into ``geom_jax_chunks.json``
(:meth:`RepresentationStore.merge_records`), after which the store is byte-identical to
one written by a single process. Readers take the records of the manifest and of every
part, so a store left by any number of writers reads correctly.
A chunk counts as done only when its file matches its record, so after a
kill -9 at any moment each chunk is either verified or recomputed by the
caller, and the finished store is byte-identical to an uninterrupted one.
:meth:`RepresentationStore.check` names each chunk that is not: a file with
other bytes or another size, a recorded file that is missing, a file written
but never recorded (the kill fell between the two).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import numpy as np
import tensorstore as ts

from geom_jax.io import files

MANIFEST = "geom_jax_chunks.json"
PART_PREFIX = "geom_jax_chunks.writer-"
METADATA = "zarr.json"
DTYPE = np.dtype("float32")


@dataclasses.dataclass(frozen=True)
class ChunkCheck:
    """Result of :meth:`RepresentationStore.check`.

    Attributes:
      done: chunk indices whose file matches its record, ascending.
      problems: one line per chunk that has a file or a record but is not done.
    """

    done: tuple[int, ...]
    problems: tuple[str, ...]


class RepresentationStore:
    """A float32 array [rows, layers, dim] chunked by ``chunk_rows`` rows.

    Use :meth:`open_or_create`; then :meth:`done_chunks` for what to skip,
    :meth:`write_rows` for each computed chunk, :meth:`read` /
    :meth:`read_layer` for the values.
    """

    def __init__(self, path: str, array: ts.TensorStore, chunk_rows: int, writer=None):
        self.path = path
        self._array = array
        self.rows, self.layers, self.dim = (int(n) for n in array.domain.shape)
        self.chunk_rows = chunk_rows
        self.writer = writer

    @classmethod
    def open_or_create(
        cls, path: str, *, rows: int, layers: int, dim: int, chunk_rows: int, writer=None
    ) -> RepresentationStore:
        """Opens the store at ``path``, or creates it when it holds no array yet.

        Args:
          path: the store folder (e.g. ``<output_dir>/representations.zarr``).
          rows: the run's rows.
          layers: hidden states per row (L+1: embedding output first).
          dim: features per hidden state.
          chunk_rows: rows per chunk (the last chunk may hold fewer rows).
          writer: None (the only writer: records go to the manifest) or this process's
            index among several writers (records go to its part of the manifest). A
            store is created by one process before the others open it.

        Returns:
          The store.

        Raises:
          ValueError: a size is not positive, or the existing store's shape,
            dtype or chunking disagrees (one line naming path, expected, found).
        """
        for name, value in (("rows", rows), ("layers", layers), ("dim", dim)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        if writer is not None and (not isinstance(writer, int) or writer < 0):
            raise ValueError(f"writer must be None or a process index >= 0, got {writer!r}")
        want = _describe((rows, layers, dim), DTYPE, (chunk_rows, layers, dim))
        _remove_stale_manifest_copies(path)
        if os.path.isfile(os.path.join(path, METADATA)):
            array = ts.open(_spec(path), open=True).result()
            shape = tuple(int(n) for n in array.domain.shape)
            chunk = tuple(int(n) for n in array.chunk_layout.read_chunk.shape)
            found = _describe(shape, np.dtype(array.dtype.numpy_dtype), chunk)
            if found != want:
                raise ValueError(
                    f"representation store {path} holds {found}, this run needs {want}; "
                    "remove it or choose another output folder"
                )
            return cls(path, array, chunk_rows, writer)
        os.makedirs(path, exist_ok=True)
        metadata = {
            "shape": [rows, layers, dim],
            "chunk_grid": {
                "name": "regular",
                "configuration": {"chunk_shape": [chunk_rows, layers, dim]},
            },
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "data_type": "float32",
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
            "fill_value": "NaN",
        }
        array = ts.open({**_spec(path), "metadata": metadata}, create=True, open=True).result()
        return cls(path, array, chunk_rows, writer)

    @classmethod
    def open_existing(cls, path: str) -> RepresentationStore:
        """The store at ``path`` with the shape and chunking it was written with.

        Raises:
          FileNotFoundError: no store there.
        """
        meta_path = os.path.join(path, METADATA)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{path}: no representation store here")
        meta = files.read_json(meta_path)
        rows, layers, dim = meta["shape"]
        chunk = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        return cls.open_or_create(path, rows=rows, layers=layers, dim=dim, chunk_rows=chunk)

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.rows / self.chunk_rows)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        """The rows [start, stop) of chunk ``chunk``."""
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.rows)

    def chunk_file(self, chunk: int) -> str:
        """The chunk's file, relative to the store folder."""
        return f"c/{chunk}/0/0"

    def write_rows(self, start: int, values: np.ndarray) -> None:
        """Writes whole chunks from row ``start`` and records their hashes.

        Args:
          start: a multiple of ``chunk_rows``.
          values: [n, layers, dim] float32, n a multiple of ``chunk_rows`` or
            reaching the last row.

        Raises:
          ValueError: misaligned start or length, wrong shape or dtype.
        """
        values = np.asarray(values)
        n = values.shape[0] if values.ndim else 0
        stop = start + n
        if values.dtype != DTYPE:
            raise ValueError(f"write_rows: values must be float32, got {values.dtype}")
        if values.shape[1:] != (self.layers, self.dim):
            raise ValueError(
                f"write_rows: values must be [n, {self.layers}, {self.dim}], got "
                f"{list(values.shape)}"
            )
        if start % self.chunk_rows or start < 0 or n < 1 or stop > self.rows:
            raise ValueError(
                f"write_rows: start={start} must be a multiple of chunk_rows={self.chunk_rows} "
                f"within the {self.rows} rows, with at least one row"
            )
        if n % self.chunk_rows and stop != self.rows:
            raise ValueError(
                f"write_rows: {n} rows from row {start} end inside a chunk (chunks of "
                f"{self.chunk_rows} rows; only the last, at row {self.rows}, may be short)"
            )
        self._array[start:stop].write(values).result()
        chunks = range(start // self.chunk_rows, math.ceil(stop / self.chunk_rows))
        name = MANIFEST if self.writer is None else f"{PART_PREFIX}{self.writer}.json"
        records = self._manifest_records(name)
        for c in chunks:
            records[str(c)] = self._record(c)
        self._write_manifest(name, records)

    def _record(self, chunk: int) -> dict:
        path = os.path.join(self.path, self.chunk_file(chunk))
        return {
            "file": self.chunk_file(chunk),
            "size": os.path.getsize(path),
            "sha256": files.file_sha256(path),
        }

    def _write_manifest(self, name: str, records: dict) -> None:
        files.write_json(
            os.path.join(self.path, name),
            {
                "shape": [self.rows, self.layers, self.dim],
                "chunk_rows": self.chunk_rows,
                "chunks": records,
            },
        )

    def _manifest_records(self, name: str) -> dict:
        """The chunk records of one manifest file ({} when it is missing or unreadable)."""
        try:
            manifest = files.read_json(os.path.join(self.path, name))
            records = manifest["chunks"]
            if manifest["shape"] != [self.rows, self.layers, self.dim] or not isinstance(
                records, dict
            ):
                return {}
            return dict(records)
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def _parts(self) -> list[str]:
        """The writers' parts of the manifest present in the store, by name."""
        names = os.listdir(self.path) if os.path.isdir(self.path) else []
        return sorted(n for n in names if n.startswith(PART_PREFIX) and n.endswith(".json"))

    def _records(self) -> dict[str, list[dict]]:
        """Every record of each chunk: the manifest's, then each part's."""
        out: dict[str, list[dict]] = {}
        for name in [MANIFEST, *self._parts()]:
            for c, record in self._manifest_records(name).items():
                out.setdefault(c, []).append(record)
        return out

    def _matching(self, chunk: int, records: list[dict]):
        """(the record the chunk's file matches or None, a problem line or None)."""
        path = os.path.join(self.path, self.chunk_file(chunk))
        start, stop = self.chunk_bounds(chunk)
        what = f"chunk {chunk} (rows {start}..{stop - 1}, {path})"
        exists = os.path.isfile(path)
        if not records:
            if exists:
                return None, (
                    f"{what} was written but its hash was never recorded (the run stopped "
                    "in between); it is recomputed"
                )
            return None, None
        if not exists:
            return None, f"{what} is missing; it is recomputed"
        size = os.path.getsize(path)
        sized = [r for r in records if r.get("size") == size]
        if not sized:
            return None, (
                f"{what} has {size} bytes, {records[-1].get('size')} were written; it is recomputed"
            )
        digest = files.file_sha256(path)
        for record in sized:
            if record.get("sha256") == digest:
                return record, None
        return None, (
            f"{what} does not match its SHA-256 (its bytes changed since it was written); "
            "it is recomputed"
        )

    def merge_records(self) -> None:
        """Folds the writers' parts into the manifest, keeping per chunk the record its
        file matches, then removes the parts. Call from one process while no other
        writes (the manifest is then what one writer would have written)."""
        parts = self._parts()
        if not parts:
            return
        merged = {}
        for c, records in self._records().items():
            if c.isdigit() and int(c) < self.num_chunks:
                record, _ = self._matching(int(c), records)
                if record is not None:
                    merged[c] = record
        self._write_manifest(MANIFEST, merged)
        for name in parts:
            os.unlink(os.path.join(self.path, name))

    def check(self, chunks=None) -> ChunkCheck:
        """Which chunks are written and verified, and what is wrong with the others.

        Args:
          chunks: the chunk indices to look at (None: all).

        Returns:
          :class:`ChunkCheck`: a chunk is done when its file has the size and
          SHA-256 recorded after it was written; a chunk with neither file nor
          record is simply not written yet (no problem line).
        """
        records = self._records()
        done, problems = [], []
        for c in range(self.num_chunks) if chunks is None else sorted(chunks):
            record, problem = self._matching(c, records.get(str(c), []))
            if record is not None:
                done.append(c)
            elif problem is not None:
                problems.append(problem)
        return ChunkCheck(tuple(done), tuple(problems))

    def done_chunks(self, chunks=None) -> list[int]:
        """The verified chunks among ``chunks`` (None: all; :meth:`check`), logging one
        warning per problem."""
        result = self.check(chunks)
        for line in result.problems:
            logging.warning("representations: %s", line)
        return list(result.done)

    def _require_recorded(self, first: int, last: int) -> None:
        records = self._records()
        for c in range(first // self.chunk_rows, last // self.chunk_rows + 1):
            if str(c) not in records:
                start, stop = self.chunk_bounds(c)
                raise ValueError(
                    f"rows {start}..{stop - 1} (chunk {c}) of {self.path} are not written yet"
                )

    def read(self, rows=slice(None)) -> np.ndarray:
        """Rows of the store: [n, layers, dim] float32.

        Args:
          rows: a slice or an integer index array.

        Raises:
          ValueError: a requested row's chunk is not written (not recorded).
        """
        if isinstance(rows, slice):
            picked = range(self.rows)[rows]
            if len(picked) == 0:
                return np.zeros((0, self.layers, self.dim), DTYPE)
            self._require_recorded(min(picked), max(picked))
            return self._array[rows].read().result()
        index = np.asarray(rows, np.int64)
        if index.size == 0:
            return np.zeros((0, self.layers, self.dim), DTYPE)
        if index.min() < 0 or index.max() >= self.rows:
            raise ValueError(f"read: row indices must be in [0, {self.rows}), got {index}")
        for c in np.unique(index // self.chunk_rows):
            self._require_recorded(int(c) * self.chunk_rows, int(c) * self.chunk_rows)
        return self._array[index].read().result()

    def read_layer(self, layer: int) -> np.ndarray:
        """Hidden state ``layer`` of every row: [rows, dim] float32."""
        if not 0 <= layer < self.layers:
            raise ValueError(f"read_layer: layer must be in [0, {self.layers}), got {layer}")
        self._require_recorded(0, self.rows - 1)
        return self._array[:, layer, :].read().result()


def _spec(path: str) -> dict:
    """Every chunk is stored, even one equal to the fill value, so that each has a file."""
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": path},
        "store_data_equal_to_fill_value": True,
    }


def _remove_stale_manifest_copies(path: str) -> None:
    """Deletes the temporary manifest copies a killed write left (their final
    rename never happened; writers open the store before any of them writes)."""
    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        if name.startswith(".tmp-") and "geom_jax_chunks" in name:
            os.unlink(os.path.join(path, name))


def _describe(shape, dtype, chunk_shape) -> str:
    dims = lambda s: "[" + ", ".join(map(str, s)) + "]"
    return f"{dims(shape)} {np.dtype(dtype).name} in chunks of {dims(chunk_shape)}"
