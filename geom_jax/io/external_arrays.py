"""Representations held outside geom-jax: one file (or folder) read into a stack
[L, N, D] (L hidden states, N rows, D features), checked, with its row keys and labels.

The format is chosen by the path:

- ``.npy``: one array, [N, D] or [L, N, D].
- ``.npz`` and ``.safetensors``: ``array=NAME`` reads that array ([N, D] or [L, N, D]);
  without it, the file's only array, or, when it holds several, each array is one
  hidden state [N, D], in the natural order of their names (numbers compared as numbers:
  ``h2`` before ``h10``).
- a Zarr array (the folder holding its ``zarr.json``, v3, or ``.zarray``, v2), read with
  tensorstore: [N, D] or [L, N, D].
- a Hugging Face dataset saved with ``save_to_disk`` (the folder), ``column=NAME``: one
  record per row, [N, D] or [N, L, D] (rows first, as the dataset holds them); needs the
  ``datasets`` package.
- ``.pt`` / ``.pth`` (``torch.save``): a tensor ([N, D] or [L, N, D]), a tuple or list of
  tensors, one per hidden state (``output_hidden_states=True`` gives such a tuple:
  ``outputs.hidden_states``), or a dict of tensors (as ``.npz``). torch is imported here
  only, when such a file is read, with ``weights_only=True`` (no code is unpickled).

Hidden states per token: with ``position="last"`` or a ``token_mask`` [B, T], every hidden
state has a token axis before D ([B, T, D] each, [L, B, T, D] as one array) and each row
keeps one token: the last (T - 1), or under the mask the last position where it is nonzero,
the row's last real token, as a pooled run keeps (``pool=last``).

Every problem is an :class:`~geom_jax.errors.ArgumentError` naming the argument
(``input``, ``array``, ``column``, ``position``, ``token_mask``, ``layers``, ``labels``,
``keys``), raised before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import tensorstore as ts

from geom_jax.errors import ArgumentError, about, argument_error
from geom_jax.io import files

FORMATS = {
    ".npy": "npy",
    ".npz": "npz",
    ".safetensors": "safetensors",
    ".pt": "torch",
    ".pth": "torch",
}
"""File extensions and their formats (folders: ``zarr`` and ``datasets``, by their files)."""

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
"""The dtypes read (stored as float32: exact but for float64's rounding)."""

TORCH_FORMAT = "torch"
POSITIONS = ("last",)
ZARR_METADATA = {"zarr.json": "zarr3", ".zarray": "zarr"}
DATASET_FILES = ("state.json", "dataset_dict.json")
GEOM_JAX_STORE = "geom_jax_chunks.json"

_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


@dataclasses.dataclass(frozen=True)
class Stack:
    """Hidden states read from outside geom-jax.

    Attributes:
      values: [L, N, D] in the input's dtype (bfloat16 as float32, exactly).
      path: the input, absolute.
      format: one of ``npy``, ``npz``, ``safetensors``, ``zarr``, ``datasets``, ``torch``.
      arrays: the names read: one array or column, one per hidden state, or none.
      shape: the input's shape as read (a list per hidden state when they were separate).
      dtype: the input's dtype.
    """

    values: np.ndarray
    path: str
    format: str
    arrays: tuple[str, ...]
    shape: list
    dtype: str

    @property
    def num_rows(self) -> int:
        return int(self.values.shape[1])


def format_of(path: str) -> str:
    """The format of ``path`` (ArgumentError naming ``input`` when it is missing or none)."""
    if not os.path.exists(path):
        raise about("input", f"{path} does not exist")
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, m)) for m in ZARR_METADATA):
            return "zarr"
        if any(os.path.isfile(os.path.join(path, m)) for m in DATASET_FILES):
            return "datasets"
        raise about(
            "input",
            f"{path} is a folder but neither a Zarr array (zarr.json or .zarray) nor a saved "
            "Hugging Face dataset (state.json or dataset_dict.json)",
        )
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise about(
            "input",
            f"{path}: unknown format {ext or '(no extension)'!r}; known: "
            f"{', '.join(FORMATS)}, a Zarr array folder or a saved Hugging Face dataset folder",
        )
    return FORMATS[ext]


def needs_torch(path: str) -> bool:
    """Whether reading ``path`` imports torch (a ``torch.save`` file)."""
    return os.path.splitext(path)[1].lower() in (e for e, f in FORMATS.items() if f == "torch")


def read_stack(
    path: str,
    *,
    array: str | None = None,
    column: str | None = None,
    position: str | None = None,
    token_mask: str | None = None,
) -> Stack:
    """Reads ``path`` into a stack [L, N, D] (see the module docstring).

    Args:
      path: the file or folder.
      array: the array of an ``.npz`` / ``.safetensors`` file or the key of a dict in a
        torch file.
      column: the column of a saved Hugging Face dataset (required there).
      position: ``"last"``: each row keeps its last token (arrays with a token axis).
      token_mask: an ``.npy`` file [B, T]: each row keeps its last token where it is
        nonzero.

    Returns:
      The :class:`Stack`; its values are checked to be floating point, of rank 2 or 3
      (after the token choice) and non-empty.

    Raises:
      ArgumentError: naming the argument at fault.
    """
    fmt = format_of(path)
    if position is not None and position not in POSITIONS:
        raise about("position", f"must be one of {', '.join(POSITIONS)}, got {position!r}")
    per_token = position is not None or token_mask is not None
    if column is not None and fmt != "datasets":
        raise about("column", f"names a column of a saved Hugging Face dataset; {path} is {fmt}")
    if fmt == "datasets":
        if array is not None:
            raise about("array", "a dataset's values are a column: pass column=NAME instead")
        if per_token:
            raise about("position", "a dataset column holds one point per row already")
    if array is not None and fmt in ("npy", "zarr"):
        raise about("array", f"{path} holds one array ({fmt}); array names one of several")
    reader = {
        "npy": _read_npy,
        "npz": _read_npz,
        "safetensors": _read_safetensors,
        "zarr": _read_zarr,
        "datasets": _read_dataset,
        TORCH_FORMAT: _read_torch,
    }[fmt]
    layers, names, shape, dtype = reader(path, array if fmt != "datasets" else column)
    mask = _read_token_mask(token_mask) if token_mask is not None else None
    if per_token:
        layers = _per_token(layers, path, mask, token_mask)
    values = _stack(layers, path)
    return Stack(values, os.path.abspath(path), fmt, names, shape, dtype)


def _check_dtype(dtype: str, path: str, what: str = "") -> str:
    if dtype not in FLOAT_DTYPES:
        raise about(
            "input",
            f"{path}{what} holds {dtype} values; representations must be floating point "
            f"({', '.join(FLOAT_DTYPES)})",
        )
    return dtype


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _named(path: str, arrays: dict, array: str | None, kind: str = "array"):
    """(layers, names, shape, dtype) of a file of named arrays: the one named, the only
    one, or each one a hidden state in natural order of the names."""
    if not arrays:
        raise about("input", f"{path} holds no array")
    if array is not None:
        if array not in arrays:
            raise about(
                "array", f"{array!r} is not in {path}; it holds {', '.join(sorted(arrays))}"
            )
        names = [array]
    else:
        names = sorted(arrays, key=_natural)
    dtypes = {arrays[n][1] for n in names}
    for n in names:
        _check_dtype(arrays[n][1], path, f" ({kind} {n!r})")
    layers = [arrays[n][0]() for n in names]
    if len(names) == 1:
        return layers[0], tuple(names), list(np.shape(layers[0])), dtypes.pop()
    shapes = [list(np.shape(x)) for x in layers]
    dtype = dtypes.pop() if len(dtypes) == 1 else "/".join(sorted(dtypes))
    return layers, tuple(names), shapes, dtype


def _read_npy(path, _):
    try:
        x = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as e:
        raise about("input", f"{path} is not a readable .npy array ({e})") from None
    return x, (), list(x.shape), _check_dtype(x.dtype.name, path)


def _read_npz(path, array):
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise about("input", f"{path} is not a readable .npz file ({e})") from None
    with z:
        arrays = {}
        for name in z.files:
            value = z[name]
            arrays[name] = ((lambda v=value: v), value.dtype.name)
        return _named(path, arrays, array)


def _read_safetensors(path, array):
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else size
        if 8 + n > size:
            raise about("input", f"{path} is not a safetensors file (its header is cut short)")
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            header = None
    if not isinstance(header, dict):
        raise about("input", f"{path}: its safetensors header is not a JSON object")
    start = 8 + n
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES.get(info["dtype"], info["dtype"])
            begin, end = (start + int(o) for o in info["data_offsets"])
            shape = tuple(int(s) for s in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise about("input", f"{path}: the safetensors entry {name!r} is malformed") from None
        if end > size:
            raise about("input", f"{path} is truncated: {name!r} ends at byte {end} of {size}")

        def load(begin=begin, end=end, dtype=dtype, shape=shape):
            raw = np.fromfile(path, np.uint8, count=end - begin, offset=begin)
            if dtype == "bfloat16":  # the upper half of a float32, exactly
                bits = raw.view("<u2").astype(np.uint32) << 16
                return bits.view(np.float32).reshape(shape)
            return raw.view(np.dtype(dtype).newbyteorder("<")).reshape(shape)

        arrays[name] = (load, dtype)
    return _named(path, arrays, array)


def _read_zarr(path, _):
    if os.path.isfile(os.path.join(path, GEOM_JAX_STORE)):
        raise about(
            "input",
            f"{path} is a geom-jax representation store [rows, L+1, D]: its run compares "
            "as it is (experiments/compare_representations.py)",
        )
    meta_name = next(m for m in ZARR_METADATA if os.path.isfile(os.path.join(path, m)))
    if meta_name == "zarr.json":
        meta = files.read_json(os.path.join(path, meta_name))
        if meta.get("node_type") == "group":
            children = sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n)))
            raise about(
                "input",
                f"{path} is a Zarr group; pass one of its arrays: {', '.join(children) or 'none'}",
            )
    spec = {"driver": ZARR_METADATA[meta_name], "kvstore": {"driver": "file", "path": path}}
    try:
        store = ts.open(spec, open=True, read=True).result()
    except ValueError as e:
        raise about("input", f"{path}: tensorstore cannot open it ({e})") from None
    dtype = np.dtype(store.dtype.numpy_dtype).name
    _check_dtype(dtype, path)
    values = store.read().result()
    if dtype == "bfloat16":
        values = values.astype(np.float32)
    return values, (), list(values.shape), dtype


def _read_dataset(path, column):
    try:
        import datasets  # noqa: PLC0415 (only for this format)
    except ImportError:
        raise about(
            "input",
            f"{path} is a saved Hugging Face dataset: reading it needs the datasets package "
            "(pip install datasets)",
        ) from None
    if column is None:
        raise argument_error("column", f"is required for a saved Hugging Face dataset ({path})")
    try:
        loaded = datasets.load_from_disk(path)
    except Exception as e:  # noqa: BLE001 (datasets raises many kinds for a bad folder)
        raise about("input", f"{path}: datasets cannot load it ({_first_line(e)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        raise about(
            "input",
            f"{path} holds the splits {', '.join(loaded)}; pass one split's folder "
            f"(e.g. {os.path.join(path, next(iter(loaded)))})",
        )
    if column not in loaded.column_names:
        raise about(
            "column",
            f"{column!r} is not a column of {path}; it has {', '.join(loaded.column_names)}",
        )
    values = _arrow_values(loaded.with_format("arrow")[:][column], path, column)
    dtype = values.dtype.name
    _check_dtype(dtype, path, f" (column {column!r})")
    shape = list(values.shape)
    if values.ndim == 3:  # [N, L, D]: rows first, as the dataset holds them
        values = np.moveaxis(values, 1, 0)
    return values, (column,), shape, dtype


def _arrow_values(chunked, path: str, column: str) -> np.ndarray:
    """A column of fixed-size nested lists of numbers as one array [N, ...]."""
    import pyarrow as pa  # noqa: PLC0415 (a datasets dependency)

    values = chunked.combine_chunks()
    if isinstance(values.type, pa.ExtensionType):  # datasets' Array2D .. Array5D features
        values = values.storage
    shape = [len(values)]
    while (
        pa.types.is_list(values.type)
        or pa.types.is_large_list(values.type)
        or (pa.types.is_fixed_size_list(values.type))
    ):
        lengths = np.asarray(values.value_lengths().fill_null(-1))
        if len(lengths) and (lengths != lengths[0]).any():
            bad = int(np.flatnonzero(lengths != lengths[0])[0])
            raise about(
                "column",
                f"{column!r} of {path}: row {bad} has {lengths[bad]} values where the first "
                f"has {lengths[0]} (rows of other lengths)",
            )
        shape.append(int(lengths[0]) if len(lengths) else 0)
        values = values.flatten()
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise about("input", f"{path} (column {column!r}) holds {values.type} values, not numbers")
    flat = values.to_numpy(zero_copy_only=False)
    return flat.reshape(shape)


def _read_torch(path, array):
    try:
        import torch  # noqa: PLC0415 (only for a torch.save file)
    except ImportError:
        raise about(
            "input",
            f"{path} is a torch.save file: reading it needs the torch package (pip install torch)",
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch raises many kinds for a bad file)
        raise about(
            "input",
            f"{path}: torch.load(weights_only=True) cannot read it ({type(e).__name__}); save a "
            "tensor, a tuple or list of tensors (e.g. outputs.hidden_states) or a dict of "
            "tensors",
        ) from None

    def as_numpy(t, what):
        if not isinstance(t, torch.Tensor):
            raise about("input", f"{path}{what} is a {type(t).__name__}, not a tensor")
        dtype = str(t.dtype).removeprefix("torch.")
        _check_dtype(dtype, path, what)
        t = t.detach().cpu()
        return (t.float() if dtype == "bfloat16" else t).numpy(), dtype

    if isinstance(obj, dict):
        converted = {str(k): as_numpy(v, f" (key {k!r})") for k, v in obj.items()}
        return _named(
            path, {k: ((lambda v=v: v[0]), v[1]) for k, v in converted.items()}, array, "key"
        )
    if array is not None:
        raise about("array", f"names a key of a dict; {path} holds a {type(obj).__name__}")
    if isinstance(obj, (tuple, list)):
        if not obj:
            raise about("input", f"{path} holds an empty {type(obj).__name__}")
        layers = [as_numpy(t, f" (item {i})") for i, t in enumerate(obj)]
        dtypes = sorted({d for _, d in layers})
        return [x for x, _ in layers], (), [list(x.shape) for x, _ in layers], "/".join(dtypes)
    x, dtype = as_numpy(obj, "")
    return x, (), list(x.shape), dtype


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _per_token(layers, path: str, mask: np.ndarray | None, mask_path: str | None) -> list:
    """Each row's chosen token of every hidden state: a list of [B, D]."""
    if isinstance(layers, list):
        items = layers
    elif np.ndim(layers) in (3, 4):
        items = [layers] if np.ndim(layers) == 3 else list(layers)
    else:
        raise about(
            "position",
            f"picks a token per row of hidden states [B, T, D] or [L, B, T, D]; {path} "
            f"holds {list(np.shape(layers))}",
        )
    return [_pick_tokens(x, path, mask, mask_path) for x in items]


def _read_token_mask(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise about("token_mask", f"{path} does not exist")
    mask = _load_npy(path, "token_mask")
    if mask.ndim != 2 or not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
        raise about(
            "token_mask",
            f"{path} must be [B, T] of 0/1 (an attention mask), got {mask.dtype.name} "
            f"{list(mask.shape)}",
        )
    empty = np.flatnonzero(~(mask != 0).any(axis=1))
    if empty.size:
        raise about("token_mask", f"row {int(empty[0])} of {path} has no token (all zero)")
    return mask != 0


def _pick_tokens(x, path: str, mask: np.ndarray | None, mask_path: str | None) -> np.ndarray:
    """[B, T, D] -> [B, D]: each row's last token (under the mask: its last real one)."""
    if np.ndim(x) != 3:
        raise about(
            "position",
            f"picks a token per row of hidden states [B, T, D]; {path} holds one of "
            f"{list(np.shape(x))}",
        )
    if mask is None:
        return np.asarray(x[:, -1])
    if mask.shape != x.shape[:2]:
        raise about(
            "token_mask",
            f"{mask_path} is {list(mask.shape)}, the hidden states [B, T] = {list(x.shape[:2])}",
        )
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    return np.asarray(x)[np.arange(len(x)), last]


PER_TOKEN_HINT = "per-token states: choose each row's token with {position}=last or {token_mask}"


def _stack(layers, path: str) -> np.ndarray:
    """[L, N, D] from one array ([N, D] or [L, N, D]) or a list of [N, D]."""
    if isinstance(layers, list):
        bad = next((i for i, x in enumerate(layers) if np.ndim(x) != 2), None)
        if bad is not None:
            raise ArgumentError(
                "{input}: hidden state {i} of {path} is {shape}; each must be [N, D] ("
                + PER_TOKEN_HINT
                + ")",
                ("input", "position", "token_mask"),
                i=bad,
                path=path,
                shape=list(np.shape(layers[bad])),
            )
        shapes = sorted({tuple(np.shape(x)) for x in layers})
        if len(shapes) > 1:
            raise about(
                "input",
                f"the hidden states of {path} differ in shape ({', '.join(map(str, shapes))})",
            )
        values = np.stack([np.asarray(x) for x in layers])
    else:
        values = np.asarray(layers)
        if values.ndim == 2:
            values = values[None]
        if values.ndim != 3:
            raise ArgumentError(
                "{input}: {path} holds {shape}; expected [N, D] or [L, N, D] ("
                + PER_TOKEN_HINT
                + ")",
                ("input", "position", "token_mask"),
                path=path,
                shape=list(values.shape),
            )
    if 0 in values.shape:
        raise about("input", f"{path} holds an empty array {list(values.shape)}")
    return values


def select_layers(stack: Stack, layers: str | None) -> tuple[np.ndarray, list[int]]:
    """The hidden states kept: ``"all"`` / None, or a comma list of indices of the input's
    hidden-state axis (in that order). Returns ([L', N, D] float32, the indices), checked
    finite row by row (ArgumentError naming ``input`` with the row and hidden state)."""
    count = stack.values.shape[0]
    if layers is None or layers.strip() in ("", "all"):
        picked = list(range(count))
    else:
        try:
            picked = [int(t) for t in layers.split(",")]
        except ValueError:
            raise about(
                "layers", f"must be 'all' or a comma list of integers, got {layers!r}"
            ) from None
        bad = [i for i in picked if not 0 <= i < count]
        if bad:
            raise about(
                "layers", f"{bad[0]} is not in [0, {count}): the input has {count} hidden states"
            )
        if len(set(picked)) != len(picked):
            raise about("layers", f"lists a hidden state twice ({layers!r})")
    with np.errstate(over="ignore"):  # beyond float32's range: inf, refused below
        values = np.asarray(stack.values[picked], np.float32)
    finite = np.isfinite(values).all(axis=-1)  # [L', N]
    if not finite.all():
        layer, row = (int(i) for i in np.argwhere(~finite)[0])
        raise about(
            "input",
            f"row {row} of hidden state {picked[layer]} of {stack.path} is not finite in "
            "float32 (NaN, inf or beyond float32's range)",
        )
    return values, picked


def _load_npy(path: str, name: str) -> np.ndarray:
    """A side file's .npy array (no pickles); ArgumentError naming ``name`` if unreadable."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise about(name, f"{path} is not a readable .npy array ({e})") from None


def read_labels(path: str, n: int) -> np.ndarray:
    """One integer class id per row (``.npy`` [N] or ``.txt``, one per line): [N] int32."""
    if not os.path.isfile(path):
        raise about("labels", f"{path} does not exist")
    if path.endswith(".npy"):
        labels = _load_npy(path, "labels")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise about(
                "labels",
                f"{path} must be [N] integers, got {labels.dtype.name} {list(labels.shape)}",
            )
    else:
        lines = _lines(path, "labels")
        try:
            labels = np.asarray([int(s) for s in lines], np.int64)
        except ValueError:
            i, s = next((i, s) for i, s in enumerate(lines) if not _is_int(s))
            raise about("labels", f"line {i + 1} of {path} is {s!r}, not an integer") from None
    if len(labels) != n:
        raise about("labels", f"{path} has {len(labels)} labels for {n} rows")
    if len(labels) and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
        raise about("labels", f"{path}: labels are class ids >= 0 (int32)")
    return labels.astype(np.int32)


def read_keys(path: str, n: int) -> np.ndarray:
    """One distinct key per row (``.txt``, one per line, or ``.npy`` [N]): [N] str."""
    if not os.path.isfile(path):
        raise about("keys", f"{path} does not exist")
    if path.endswith(".npy"):
        keys = _load_npy(path, "keys")
        if keys.ndim != 1:
            raise about("keys", f"{path} must be [N], got {list(keys.shape)}")
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in keys.tolist()]
    else:
        keys = _lines(path, "keys")
    if len(keys) != n:
        raise about("keys", f"{path} has {len(keys)} keys for {n} rows")
    first = {}
    for i, k in enumerate(keys):
        if not k:
            raise about("keys", f"row {i} of {path} has an empty key")
        if k in first:
            raise about("keys", f"{path}: key {k!r} is on rows {first[k]} and {i}")
        first[k] = i
    return np.asarray(keys, dtype=str)


def _lines(path: str, name: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise about(name, f"{path} is not UTF-8 text") from None
    return [line.strip() for line in text.splitlines()]


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def input_sha256(path: str) -> str:
    """SHA-256 of a file; of a folder, the SHA-256 of its ``sha256sum``-style listing
    (``<sha256>  <relative path>`` per file, sorted by path)."""
    if os.path.isfile(path):
        return files.file_sha256(path)
    lines = []
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            lines.append(f"{files.file_sha256(full)}  {rel}\n")
    return hashlib.sha256("".join(sorted(lines, key=lambda s: s[66:])).encode()).hexdigest()
