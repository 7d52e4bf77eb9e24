"""Prompt sources, tokenisation with length filtering, token windows, and block shuffling."""

from geom_jax.data.retokenize import Retokenized, retokenize, retokenize_windows, window_texts
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
from geom_jax.data.windows import (
    WindowSelection,
    duplicate_summary,
    select_windows,
    window_summary,
)

__all__ = [
    "FULL_PERMUTATION",
    "PYDOC",
    "HFDatasetSource",
    "JsonlSource",
    "Prompt",
    "PromptSelection",
    "PromptSource",
    "PydocSource",
    "Retokenized",
    "TextFilesSource",
    "WindowSelection",
    "block_permutation",
    "check_divisible",
    "duplicate_summary",
    "encode",
    "full_permutation",
    "open_source",
    "retokenize",
    "retokenize_windows",
    "select_prompts",
    "select_windows",
    "shuffle_tokens",
    "window_summary",
    "window_texts",
]
