"""Prompt sources, tokenisation with length filtering, and block shuffling."""

from geom_jax.data.shuffle import (
    FULL_PERMUTATION,
    block_permutation,
    check_divisible,
    full_permutation,
    shuffle_tokens,
)
from geom_jax.data.sources import (
    PYDOC,
    HFDatasetSource,
    JsonlSource,
    Prompt,
    PromptSource,
    PydocSource,
    TextFilesSource,
    open_source,
)
from geom_jax.data.tokenize import PromptSelection, encode, select_prompts

__all__ = [
    "FULL_PERMUTATION",
    "PYDOC",
    "HFDatasetSource",
    "JsonlSource",
    "Prompt",
    "PromptSelection",
    "PromptSource",
    "PydocSource",
    "TextFilesSource",
    "block_permutation",
    "check_divisible",
    "encode",
    "full_permutation",
    "open_source",
    "select_prompts",
    "shuffle_tokens",
]
