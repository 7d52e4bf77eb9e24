"""`load(name_or_path)`: one entry point for local safetensors directories,
Hub ids and aliases, GGUF files and the embedded default."""
from __future__ import annotations

import os

import jax.numpy as jnp

from .. import tokenizer as tok
from ..config import family_of, from_hf_config
from ..decoder import DEFAULT_ATTN_BLOCK, Decoder, with_params
from . import hub
from .assemble import load_params
from .embedded import smollm2_gguf_path
from .errors import UnknownModelError
from .gguf_file import GGUFFile
from .safetensors_dir import SafetensorsDir


def _from_directory(path, *, name, checkpoint_id, dtype, param_dtype, attn_block, tokenizer):
    source = SafetensorsDir(path)
    family_of(source.hf_config)
    cfg = from_hf_config(source.hf_config, name=name,
                         checkpoint_id=checkpoint_id or f"{source.path}#sha256-headers:{source.fingerprint()}")
    params = load_params(cfg, source, param_dtype)
    source.close()
    model = with_params(cfg, params, dtype=dtype, param_dtype=param_dtype, attn_block=attn_block)
    return model, tok.from_directory(source.path) if tokenizer else None


def _from_gguf(path, *, name, dtype, param_dtype, attn_block, tokenizer):
    source = GGUFFile(path)
    sha = source.sha256()
    cfg = from_hf_config(source.hf_config, name=name, checkpoint_id=f"{source.path}#sha256:{sha}")
    params = load_params(cfg, source, param_dtype)
    model = with_params(cfg, params, dtype=dtype, param_dtype=param_dtype, attn_block=attn_block)
    return model, tok.from_gguf(source.reader, sha) if tokenizer else None


def _looks_like_path(name: str) -> bool:
    return (name.endswith(".gguf") or name.startswith((".", "/", "~", os.sep))
            or name.count("/") > 1 or (os.sep != "/" and os.sep in name))


def load(name_or_path: str, *, dtype=jnp.float32, param_dtype=jnp.float32,
         revision: str | None = None, attn_block: int = DEFAULT_ATTN_BLOCK,
         tokenizer: bool = True) -> tuple[Decoder, object]:
    """Loads a checkpoint as (Decoder, tokenizer); geom_jax never imports torch.

    `name_or_path` is one of: an alias (`smollm2-135m`, the embedded default;
    `llama-3-8b`, `llama-3.1-8b`, `mistral-7b`, `pythia-6.9b`,
    `pythia-6.9b-deduped`); a directory with config.json and *.safetensors
    (single file or sharded with model.safetensors.index.json); a `.gguf`
    file; or a Hub id `org/name` (optionally at `revision`), fetched with
    huggingface_hub.snapshot_download. The tokenizer is a transformers
    PreTrainedTokenizerFast, or None for a directory without tokenizer files
    or with `tokenizer=False` (which leaves transformers unimported; when
    torch is installed, importing transformers 5 imports it).
    """
    name = str(name_or_path)
    kwargs = dict(dtype=dtype, param_dtype=param_dtype, attn_block=attn_block, tokenizer=tokenizer)
    key = name.lower()
    if key in hub.ALIASES:
        target = hub.ALIASES[key]
        if target == hub.EMBEDDED:
            return _from_gguf(smollm2_gguf_path(), name=key, **kwargs)
        name, alias = target, key
    else:
        alias = None
    if os.path.isdir(name):
        return _from_directory(name, name=os.path.basename(os.path.normpath(name)), checkpoint_id="",
                               **kwargs)
    if os.path.isfile(name):
        if name.endswith(".gguf"):
            return _from_gguf(name, name=os.path.basename(name), **kwargs)
        raise UnknownModelError(f"{name} is a file but not a .gguf; pass a checkpoint directory "
                                "(config.json + *.safetensors) or a .gguf file")
    if alias is None and _looks_like_path(name):
        raise FileNotFoundError(f"no such file or directory: {name}")
    if hub.is_hub_id(name):
        folder = hub.download(name, revision)
        commit = os.path.basename(os.path.normpath(folder))
        return _from_directory(folder, name=alias or name, checkpoint_id=f"hf://{name}@{commit}",
                               **kwargs)
    raise UnknownModelError(
        f"unknown model {name!r}: not an existing path, a Hub id (org/name) or a known alias; "
        f"known aliases: {', '.join(sorted(hub.ALIASES))}")
