"""Tokenizers through transformers (fast, Rust-backed): from a checkpoint
directory's tokenizer files, or built from a GGUF file's embedded vocabulary
with transformers' GGUF tokenizer builders (`convert_gguf_tokenizer`). The
GGUF metadata is read with the `gguf` package, not with
`AutoTokenizer.from_pretrained(gguf_file=...)`, whose reader imports torch;
the result equals what that call gives.

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
    return os.environ.get("GEOM_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "geom_jax"
    )


def from_directory(path: str):
    """The directory's tokenizer, or None when it ships no tokenizer files."""
    if not any(os.path.isfile(os.path.join(path, n)) for n in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer  # noqa: PLC0415  (3 s to import: on first use)

    return AutoTokenizer.from_pretrained(path)


_GGUF_TOKENIZER_KEYS = {
    "tokenizer.ggml.model": "tokenizer_type",
    "tokenizer.ggml.pre": "pre_tokenizer_type",
    "tokenizer.ggml.tokens": "tokens",
    "tokenizer.ggml.scores": "scores",
    "tokenizer.ggml.token_type": "token_type",
    "tokenizer.ggml.merges": "merges",
    "tokenizer.ggml.precompiled_charsmap": "precompiled_charsmap",
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.unknown_token_id": "unk_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
    "tokenizer.ggml.add_space_prefix": "add_prefix_space",
}
_GGUF_CONFIG_KEYS = {
    "tokenizer.chat_template": "chat_template",
    "tokenizer.ggml.add_bos_token": "add_bos_token",
    "tokenizer.ggml.add_eos_token": "add_eos_token",
}
_SPECIAL = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def _convert_gguf(reader):
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415  (as above)
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (  # noqa: PLC0415
        convert_gguf_tokenizer,
    )

    meta = {
        k: f.contents()
        for k, f in reader.fields.items()
        if k.startswith("tokenizer.") or k == "general.architecture"
    }
    if "tokenizer.ggml.tokens" not in meta:
        raise ValueError(
            "the GGUF file has no tokenizer (tokenizer.ggml.tokens); pass tokenizer=False"
        )
    vocab = {name: meta[k] for k, name in _GGUF_TOKENIZER_KEYS.items() if k in meta}
    config = {name: meta[k] for k, name in _GGUF_CONFIG_KEYS.items() if k in meta}
    if vocab.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)
    for name, key in _SPECIAL.items():
        token_id = meta.get(f"tokenizer.ggml.{key}")
        config[name] = vocab["tokens"][token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(meta["general.architecture"], vocab)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)


def from_gguf(reader, sha256: str | None = None):
    """Tokenizer of a GGUF file (a gguf.GGUFReader), cached by file hash."""
    from transformers import AutoTokenizer  # noqa: PLC0415  (3 s to import: on first use)

    cached = os.path.join(cache_root(), "tokenizers", sha256) if sha256 else None
    if cached and os.path.isfile(os.path.join(cached, "tokenizer.json")):
        return AutoTokenizer.from_pretrained(cached)
    tok = _convert_gguf(reader)
    if cached:
        try:
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            tmp = tempfile.mkdtemp(dir=os.path.dirname(cached))
            tok.save_pretrained(tmp)
            os.replace(tmp, cached) if not os.path.exists(cached) else shutil.rmtree(tmp)
        except OSError:
            pass
    return tok
