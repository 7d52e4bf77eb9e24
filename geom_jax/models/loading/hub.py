"""Hugging Face Hub ids and the short aliases of the studied models,
downloaded with huggingface_hub.snapshot_download (safetensors, config and
tokenizer files only), token from HF_TOKEN / HUGGING_FACE_HUB_TOKEN."""

from __future__ import annotations

import os
import re

import huggingface_hub
from huggingface_hub import errors

from ..config import FAMILIES, RegistryView

EMBEDDED = "embedded:smollm2-135m"


def _aliases() -> dict[str, str]:
    out = {alias: repo for family in FAMILIES.values() for alias, repo in family.aliases.items()}
    out["smollm2-135m"] = EMBEDDED
    return out


ALIASES = RegistryView(_aliases)
"""Alias -> Hub id (or the embedded default), from the registered families."""


ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
]

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.fullmatch(name)) and not name.endswith(".gguf")


def hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")


TOKENIZER_PATTERNS = [p for p in ALLOW_PATTERNS if "safetensors" not in p]


class RevisionNotFoundError(ValueError):
    """A Hub repo (or the local cache, offline) has no such revision."""


def download(repo_id: str, revision: str | None = None, *, tokenizer_only: bool = False) -> str:
    """Local snapshot folder of `repo_id` at `revision` (a branch, tag or
    commit; default main), cached by huggingface_hub, which also resolves it
    offline (HF_HUB_OFFLINE=1) from the cache's refs/; with `tokenizer_only`,
    only the config and tokenizer files.

    Raises:
      RevisionNotFoundError: the revision is not on the Hub, or offline not in
        the cache, in one line naming it.
    """

    try:
        return huggingface_hub.snapshot_download(
            repo_id=repo_id,
            revision=revision,
            token=hub_token(),
            allow_patterns=TOKENIZER_PATTERNS if tokenizer_only else ALLOW_PATTERNS,
        )
    except errors.RevisionNotFoundError:
        raise RevisionNotFoundError(f"revision {revision!r} not found in {repo_id}") from None
    except errors.LocalEntryNotFoundError:
        cache = huggingface_hub.constants.HF_HUB_CACHE
        raise RevisionNotFoundError(
            f"revision {revision or 'main'!r} of {repo_id} is not in the Hugging Face cache "
            f"{cache} and the Hub cannot be reached (HF_HUB_OFFLINE="
            f"{int(huggingface_hub.constants.HF_HUB_OFFLINE)})"
        ) from None


_COMMIT = re.compile(r"[0-9a-f]{40}")


def commit_of(folder: str) -> str:
    """The snapshot folder's name: the commit hash in huggingface_hub's cache."""
    return os.path.basename(os.path.normpath(folder))


def commit_in(checkpoint_id: str) -> str | None:
    """The commit hash of an `hf://repo@commit` checkpoint id, else None."""
    if not checkpoint_id.startswith("hf://") or "@" not in checkpoint_id:
        return None
    commit = checkpoint_id.rsplit("@", 1)[1]
    return commit if _COMMIT.fullmatch(commit) else None


def pinned(folder: str, revision: str | None) -> str | None:
    """The commit `folder` holds when it is a commit hash, so that weights
    fetched later come from the same commit as its config; else `revision`."""
    commit = commit_of(folder)
    return commit if _COMMIT.fullmatch(commit) else revision
