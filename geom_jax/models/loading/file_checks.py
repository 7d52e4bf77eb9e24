"""Truncated or damaged checkpoint files, found before their tensors are used.

A ``.safetensors`` file is an 8-byte header length, a JSON header giving each
tensor's byte range, then the data: :func:`check_safetensors` reads the
header alone and compares the ranges with the file size. A ``.gguf`` file is
parsed by the ``gguf`` package; :func:`read_gguf` runs its reader with every
read bounds-checked, so a short file is reported with the offset the parser
needed instead of an ``IndexError`` or a failed reshape deep inside it.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .errors import CorruptFileError

_AGAIN = "the file is truncated or damaged; download or convert it again"


def check_safetensors(path: str) -> None:
    """Raises CorruptFileError naming ``path``, its size and the offset at fault."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CorruptFileError(f"{path}: only {size} bytes, too short for a safetensors header")
        n = int.from_bytes(head, "little")
        if 8 + n > size:
            raise CorruptFileError(
                f"{path}: the safetensors header claims {n} bytes (to offset {8 + n}) but the file "
                f"has {size} bytes; {_AGAIN}"
            )
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            raise CorruptFileError(
                f"{path}: the safetensors header (bytes 8..{8 + n}) is not valid JSON; {_AGAIN}"
            ) from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path}: the safetensors header is not a JSON object; {_AGAIN}")
    ends = {
        name: int(info["data_offsets"][1])
        for name, info in header.items()
        if name != "__metadata__" and isinstance(info, dict) and "data_offsets" in info
    }
    if ends:
        name = max(ends, key=ends.get)
        if 8 + n + ends[name] > size:
            raise CorruptFileError(
                f"{path}: {size} bytes, but tensor {name!r} ends at offset {8 + n + ends[name]}; "
                f"{_AGAIN}"
            )


class _OutOfBounds(Exception):
    def __init__(self, offset: int, end: int):
        super().__init__(offset, end)
        self.offset, self.end = offset, end


def read_gguf(path: str):
    """A ``gguf.GGUFReader`` of ``path``; CorruptFileError (file, size, offset) if it is short
    or not a GGUF file."""
    import gguf  # noqa: PLC0415  (only for .gguf files; the device images lack it)

    class CheckedReader(gguf.GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            end = int(offset) + int(np.dtype(dtype).itemsize) * int(count)
            if end > len(self.data):
                raise _OutOfBounds(int(offset), end)
            return super()._get(offset, dtype, count, override_order)

    size = os.path.getsize(path)
    try:
        return CheckedReader(path)
    except _OutOfBounds as e:
        raise CorruptFileError(
            f"{path}: {size} bytes, but the GGUF data continues to offset {e.end} (read at offset "
            f"{e.offset}); {_AGAIN}"
        ) from None
    except (ValueError, IndexError, KeyError, UnicodeDecodeError, OverflowError) as e:
        raise CorruptFileError(
            f"{path} ({size} bytes) is not a readable GGUF file ({type(e).__name__}: {e}); {_AGAIN}"
        ) from None
