"""Prompt sources, tokenisation with length filtering, and block shuffling."""

from geom_jax.data.shuffle import block_permutation, check_divisible, shuffle_tokens
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
    "open_source",
    "select_prompts",
    "shuffle_tokens",
]
