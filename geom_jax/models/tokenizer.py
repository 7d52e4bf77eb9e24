"""Tokenizers through transformers (fast, Rust-backed): from a checkpoint
directory's tokenizer files, or built from a GGUF file's embedded vocabulary
with transformers' `gguf_file` support.

Converting a GGUF vocabulary takes seconds, so the converted tokenizer is
saved under `$GEOM_JAX_CACHE/tokenizers/<file sha256>` (default
~/.cache/geom_jax) and reloaded from there. geom_jax never imports torch;
note that transformers 5 imports torch at import time when it is installed.
"""
from __future__ import annotations

import os
import shutil
import tempfile

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def cache_root() -> str:
    return os.environ.get("GEOM_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "geom_jax")


def from_directory(path: str):
    """The directory's tokenizer, or None when it ships no tokenizer files."""
    if not any(os.path.isfile(os.path.join(path, n)) for n in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def from_gguf(path: str, sha256: str | None = None):
    from transformers import AutoTokenizer

    cached = os.path.join(cache_root(), "tokenizers", sha256) if sha256 else None
    if cached and os.path.isfile(os.path.join(cached, "tokenizer.json")):
        return AutoTokenizer.from_pretrained(cached)
    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                        gguf_file=os.path.basename(path))
    if cached:
        try:
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            tmp = tempfile.mkdtemp(dir=os.path.dirname(cached))
            tok.save_pretrained(tmp)
            os.replace(tmp, cached) if not os.path.exists(cached) else shutil.rmtree(tmp)
        except OSError:
            pass
    return tok
