"""Tokenizers through transformers (fast, Rust-backed; no torch import):
from a checkpoint directory's tokenizer files, or built from a GGUF file's
embedded vocabulary with transformers' `gguf_file` support."""
from __future__ import annotations

import os

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def from_directory(path: str):
    """The directory's tokenizer, or None when it ships no tokenizer files."""
    if not any(os.path.isfile(os.path.join(path, n)) for n in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def from_gguf(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                         gguf_file=os.path.basename(path))
