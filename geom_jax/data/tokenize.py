"""Tokenisation and length filtering as the paper does it (Sec. 3.1).

Each text is stripped and tokenised without special tokens; a prompt is kept
only if it reaches ``max_tokens`` tokens under *every* tokenizer of a
comparison (the paper keeps 2,244 of Pile-10K at 1024 tokens), and is then
truncated to ``max_tokens``. The kept source indices are returned so that
runs on different models use the same prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from geom_jax.data.sources import Prompt
from geom_jax.errors import ArgumentError, about, value_error


@dataclasses.dataclass(frozen=True)
class PromptSelection:
    """The prompts kept for a run.

    Attributes:
      indices: [P] source indices of the kept prompts, in source order.
      keys: [P] stable ids of the kept prompts (e.g. pydoc topic names).
      token_ids: [P, T] int32 token ids under the first tokenizer, T =
        max_tokens (+1 with ``add_bos``).
      num_scanned: how many source prompts were read to find them.
    """

    indices: np.ndarray
    keys: tuple[str, ...]
    token_ids: np.ndarray
    num_scanned: int


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text.strip()`` without special tokens."""
    return tokenizer(text.strip(), add_special_tokens=False)["input_ids"]


def bos_id(tokenizer) -> int:
    tok_id = getattr(tokenizer, "bos_token_id", None)
    if tok_id is None:
        raise about("add_bos", "the tokenizer defines no beginning-of-sequence token")
    return int(tok_id)


def select_prompts(
    prompts: Iterable[Prompt],
    tokenizers: Sequence,
    *,
    max_tokens: int,
    num_prompts: int | None,
    add_bos: bool = False,
    dataset_name: str = "",
) -> PromptSelection:
    """Keeps the first ``num_prompts`` prompts reaching ``max_tokens`` tokens.

    Args:
      prompts: the source, in order.
      tokenizers: every tokenizer of the comparison; the first one provides
        the returned token ids.
      max_tokens: tokens a prompt must reach (without BOS); it is truncated to it.
      num_prompts: how many to keep; None keeps all that qualify.
      add_bos: prepend the first tokenizer's BOS token.
      dataset_name: named in errors.

    Raises:
      ValueError: when fewer than ``num_prompts`` prompts qualify (the message
        says how many do), or none does.
    """
    if max_tokens < 4:
        raise value_error("max_tokens", max_tokens, "is below the minimum of 4 tokens")
    if num_prompts is not None and num_prompts < 1:
        raise value_error("num_prompts", num_prompts, "must be positive")
    if not tokenizers:
        raise ValueError("select_prompts needs at least one tokenizer")
    prefix = [bos_id(tokenizers[0])] if add_bos else []
    indices, keys, rows = [], [], []
    scanned = 0
    for prompt in prompts:
        scanned += 1
        ids = encode(tokenizers[0], prompt.text)
        if len(ids) < max_tokens:
            continue
        if any(len(encode(tok, prompt.text)) < max_tokens for tok in tokenizers[1:]):
            continue
        indices.append(prompt.index)
        keys.append(prompt.key)
        rows.append(prefix + ids[:max_tokens])
        if num_prompts is not None and len(rows) == num_prompts:
            break
    wanted = num_prompts if num_prompts is not None else 1
    if len(rows) < wanted:
        raise ArgumentError(
            "{num_prompts}={wanted}: only {found} of the {scanned} prompts of dataset "
            "{dataset!r} reach {max_tokens}={tokens} tokens{under}",
            ("num_prompts", "max_tokens"),
            wanted=num_prompts,
            found=len(rows),
            scanned=scanned,
            dataset=dataset_name,
            tokens=max_tokens,
            under=f" under all {len(tokenizers)} tokenizers" if len(tokenizers) > 1 else "",
        )
    return PromptSelection(
        indices=np.asarray(indices, np.int64),
        keys=tuple(keys),
        token_ids=np.asarray(rows, np.int32),
        num_scanned=scanned,
    )
