"""Reads llama-architecture GGUF files (llama.cpp's format) with the `gguf`
package: metadata -> HF-style config dict, tensors dequantised to float32
one at a time and renamed to Hugging Face's state-dict names.

llama.cpp's converter permutes the rows of attn_q / attn_k within each head
from HF's half-split rotary layout to interleaved pairs; `get` undoes it, as
transformers' GGUF loader does.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re

import numpy as np

from ..config import FAMILIES
from .errors import UnsupportedArchitectureError, UnsupportedQuantizationError
from .file_checks import read_gguf

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")

_LAYER = re.compile(r"blk\.(\d+)\.(.+)")


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k permutation: rows (head, pair, 2) -> (head, 2, pair)."""
    rest = w.shape[1:]
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _gguf_names(arch: str, path: str) -> dict[str, str]:
    """The GGUF -> HF name map of the family that reads GGUF architecture `arch`."""
    readers = {f.gguf_architecture: f for f in FAMILIES.values() if f.gguf_architecture}
    if arch not in readers:
        raise UnsupportedArchitectureError(
            f"unsupported GGUF architecture {arch!r} in {path}; supported: "
            + ", ".join(f"{a!r} (family {f.name})" for a, f in sorted(readers.items()))
        )
    return dict(readers[arch].gguf_names)


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def dequantize(tensor) -> np.ndarray:
    """float32 array in HF (row-major, [out, in]) order."""
    import gguf  # noqa: PLC0415  (only for .gguf files; the device images lack it)

    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise UnsupportedQuantizationError(
            f"GGUF tensor {tensor.name!r} uses quantisation {kind}, which is not supported; "
            f"supported: {', '.join(SUPPORTED_TYPES)}"
        )
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return np.asarray(data, np.float32).reshape(shape)


class GGUFFile:
    """Tensor source over a GGUF file; `get(name)` takes HF names."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no such GGUF file: {self.path}")
        self.reader = read_gguf(self.path)
        self.arch = _field(self.reader, "general.architecture")
        self._names = _gguf_names(self.arch, self.path)
        self._tensors = {}
        for t in self.reader.tensors:
            self._tensors[self._hf_name(t.name)] = t
        unsupported = sorted(
            {
                t.tensor_type.name
                for t in self.reader.tensors
                if t.tensor_type.name not in SUPPORTED_TYPES
            }
        )
        if unsupported:
            raise UnsupportedQuantizationError(
                f"{self.path} uses GGUF quantisation {', '.join(unsupported)}, which is not "
                f"supported; supported: {', '.join(SUPPORTED_TYPES)}"
            )
        if "rope_freqs.weight" in self._tensors:
            raise UnsupportedArchitectureError(
                "GGUF rope_freqs (Llama 3.1 rope scaling stored as a tensor) is not supported"
            )
        self.hf_config = self._hf_config()
        self._sha256 = None

    def _hf_name(self, name: str) -> str:
        """llama.cpp's tensor name -> HF's, from the family's `gguf_names`."""
        if name in self._names:
            return self._names[name]
        m = _LAYER.fullmatch(name)
        key = f"blk.{{i}}.{m.group(2)}" if m else None
        if key in self._names:
            return self._names[key].format(i=m.group(1))
        return name

    def _hf_config(self) -> dict:
        r, a = self.reader, self.arch
        heads = int(_field(r, f"{a}.attention.head_count"))
        hidden = int(_field(r, f"{a}.embedding_length"))
        embed = self._tensors["model.embed_tokens.weight"]
        cfg = dict(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            vocab_size=int(embed.shape[-1]),
            hidden_size=hidden,
            intermediate_size=int(_field(r, f"{a}.feed_forward_length")),
            num_hidden_layers=int(_field(r, f"{a}.block_count")),
            num_attention_heads=heads,
            num_key_value_heads=int(_field(r, f"{a}.attention.head_count_kv", heads)),
            head_dim=int(_field(r, f"{a}.attention.key_length", hidden // heads)),
            max_position_embeddings=int(_field(r, f"{a}.context_length", 2048)),
            rms_norm_eps=float(_field(r, f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(_field(r, f"{a}.rope.freq_base", 10000.0)),
            hidden_act="silu",
            tie_word_embeddings="lm_head.weight" not in self._tensors,
        )
        scaling = _field(r, f"{a}.rope.scaling.type")
        if scaling not in (None, "none"):
            if scaling != "linear":
                raise UnsupportedArchitectureError(f"unsupported GGUF rope scaling {scaling!r}")
            cfg["rope_scaling"] = dict(
                rope_type="linear", factor=float(_field(r, f"{a}.rope.scaling.factor"))
            )
        return cfg

    def names(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def quantization_types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.reader.tensors:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        return counts

    def get(self, name: str) -> np.ndarray:
        w = dequantize(self._tensors[name])
        if name.endswith("self_attn.q_proj.weight"):
            w = unpermute_rows(w, self.hf_config["num_attention_heads"])
        elif name.endswith("self_attn.k_proj.weight"):
            w = unpermute_rows(w, self.hf_config["num_key_value_heads"])
        return w

    def sha256(self) -> str:
        if self._sha256 is None:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            self._sha256 = h.hexdigest()
        return self._sha256


@functools.lru_cache(maxsize=4)
def _open_unchanged(path: str, size: int, mtime_ns: int) -> GGUFFile:
    return GGUFFile(path)


def open_gguf(path: str) -> GGUFFile:
    """The GGUFFile of ``path``, parsed once per process while the file is
    unchanged (parsing the metadata takes seconds; a run reads the tokenizer
    and then the weights of the same file)."""
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
    except OSError:
        return GGUFFile(path)  # raises its FileNotFoundError
    return _open_unchanged(path, st.st_size, st.st_mtime_ns)
