"""A located checkpoint whose config is read and whose weights are not.

`open_checkpoint(resolved, revision)` reads only config.json or GGUF
metadata (a Hub id fetches its config and tokenizer files alone), so a
mesh can be checked and a params checkpoint restored before any weight is
read or downloaded; `tensors()`, `checkpoint_id()` and `tokenizer()` do the
rest on demand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .. import tokenizer as tok
from ..config import FAMILIES, DecoderConfig, from_hf_config
from . import hub
from .assemble import TensorSource
from .gguf_file import open_gguf
from .safetensors_dir import SafetensorsDir


@dataclasses.dataclass(frozen=True)
class Opened:
    """`config` lacks its checkpoint_id until `identified()`."""

    config: DecoderConfig
    checkpoint_id: Callable[[], str]
    tensors: Callable[[], TensorSource]
    tokenizer: Callable[[], object]

    def identified(self) -> DecoderConfig:
        return self.config.replace(checkpoint_id=self.checkpoint_id())


class BasePrefixed:
    """A safetensors source whose checkpoint was saved from the base model
    (`h.0.attn...` for GPT-2's `transformer.h.0.attn...`): names with the
    family's `base_prefix` are read without it when only that form exists."""

    def __init__(self, source: SafetensorsDir, prefix: str):
        self.source, self.prefix = source, prefix

    def _name(self, name: str) -> str:
        if name not in self.source and name.startswith(self.prefix):
            return name[len(self.prefix) :]
        return name

    def __contains__(self, name: str) -> bool:
        return self._name(name) in self.source

    def get(self, name: str):
        return self.source.get(self._name(name))

    def get_slice(self, name: str):
        return self.source.get_slice(self._name(name))

    def close(self):
        self.source.close()


def _prefixed(source: SafetensorsDir, config: DecoderConfig):
    prefix = FAMILIES[config.family].base_prefix
    return BasePrefixed(source, prefix) if prefix else source


def _directory(path: str, name: str) -> Opened:
    source = SafetensorsDir(path)
    config = from_hf_config(source.hf_config, name=name)
    return Opened(
        config=config,
        checkpoint_id=lambda: f"{source.path}#sha256-headers:{source.fingerprint()}",
        tensors=lambda: _prefixed(source, config),
        tokenizer=lambda: tok.from_directory(source.path),
    )


def _gguf(path: str, name: str) -> Opened:
    source = open_gguf(path)
    return Opened(
        config=from_hf_config(source.hf_config, name=name),
        checkpoint_id=lambda: f"{source.path}#sha256:{source.sha256()}",
        tensors=lambda: source,
        tokenizer=lambda: tok.from_gguf(source.reader, source.sha256()),
    )


def _hub(repo: str, name: str, revision: str | None) -> Opened:
    folder = hub.download(repo, revision, tokenizer_only=True)
    config = from_hf_config(SafetensorsDir(folder).hf_config, name=name)
    return Opened(
        config=config,
        checkpoint_id=lambda: f"hf://{repo}@{hub.commit_of(folder)}",
        tensors=lambda: _prefixed(
            SafetensorsDir(hub.download(repo, hub.pinned(folder, revision))), config
        ),
        tokenizer=lambda: tok.from_directory(folder),
    )


def open_checkpoint(resolved, revision: str | None = None) -> Opened:
    """`resolved` is a `load.Resolved` (kind 'gguf', 'directory' or 'hub')."""
    if resolved.kind == "gguf":
        return _gguf(resolved.location, resolved.name)
    if resolved.kind == "directory":
        return _directory(resolved.location, resolved.name)
    return _hub(resolved.location, resolved.name, revision)
