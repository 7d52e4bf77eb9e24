"""Reads a Hugging Face checkpoint directory: `config.json` plus one
`model.safetensors` or shards listed in `model.safetensors.index.json`.
Tensors are memory-mapped and read one at a time, or one box of one
tensor (`get_slice`), as NumPy arrays."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from safetensors import safe_open

from .errors import CorruptFileError, MissingTensorError
from .file_checks import check_safetensors

INDEX = "model.safetensors.index.json"


class SafetensorsDir:
    """Tensor source over a checkpoint directory; `get(name)` -> np.ndarray."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        config_path = os.path.join(self.path, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{self.path} has no config.json")
        try:
            with open(config_path, encoding="utf-8") as f:
                self.hf_config = json.load(f)
        except ValueError as e:
            raise CorruptFileError(f"{config_path} is not valid JSON ({e})") from None
        self._file_of: dict[str, str] | None = None
        self._handles: dict[str, object] = {}

    def _index(self) -> dict[str, str]:
        """Tensor name -> file, built on first use (after config checks)."""
        if self._file_of is not None:
            return self._file_of
        index = os.path.join(self.path, INDEX)
        if os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            self._file_of = dict(weight_map)
        else:
            files = sorted(n for n in os.listdir(self.path) if n.endswith(".safetensors"))
            if not files:
                other = [n for n in os.listdir(self.path) if n.endswith((".bin", ".pt", ".pth"))]
                hint = (
                    f" (found {', '.join(other)}: PyTorch pickles are not read, to keep torch "
                    "off the load path; convert them with save_pretrained(safe_serialization=True))"
                    if other
                    else ""
                )
                raise FileNotFoundError(f"no *.safetensors file in {self.path}{hint}")
            self._file_of = {}
            for name in files:
                check_safetensors(os.path.join(self.path, name))
                with safe_open(os.path.join(self.path, name), framework="numpy") as f:
                    for key in f.keys():
                        self._file_of[key] = name
        for name in sorted(set(self._file_of.values())):
            if not os.path.isfile(os.path.join(self.path, name)):
                raise FileNotFoundError(
                    f"shard {name} listed in {INDEX} is missing from {self.path}"
                )
            if os.path.isfile(index):
                check_safetensors(os.path.join(self.path, name))
        return self._file_of

    def names(self) -> list[str]:
        return list(self._index())

    def __contains__(self, name: str) -> bool:
        return name in self._index()

    def _handle(self, name: str):
        if name not in self._index():
            raise MissingTensorError(f"tensor {name!r} not found in {self.path}")
        file = self._file_of[name]
        if file not in self._handles:
            self._handles[file] = safe_open(os.path.join(self.path, file), framework="numpy")
        return self._handles[file]

    def get(self, name: str) -> np.ndarray:
        return self._handle(name).get_tensor(name)

    def get_slice(self, name: str):
        """A lazy view of `name`: `.get_shape()`, and `view[box]` (a tuple of
        slices) reads only that box from the file."""
        return self._handle(name).get_slice(name)

    def close(self):
        self._handles.clear()

    def fingerprint(self) -> str:
        """sha256 over config.json and every shard's header and size: cheap,
        and changes whenever the weights' layout or bytes count change."""
        h = hashlib.sha256()
        with open(os.path.join(self.path, "config.json"), "rb") as f:
            h.update(f.read())
        for name in sorted(set(self._index().values())):
            p = os.path.join(self.path, name)
            with open(p, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                h.update(f.read(n))
            h.update(str(os.path.getsize(p)).encode())
        return h.hexdigest()
