"""Block shuffling of token sequences: the paper's Algorithm 1.

Shuffle index ``s`` splits the T tokens into ``4**s`` contiguous blocks of
``T // 4**s`` tokens and permutes the blocks; ``s = 0`` leaves the prompt
intact, and at ``4**s = T`` every token is moved on its own. The permutation
is drawn from a NumPy generator seeded by ``(seed, prompt_index, s)``, so it
depends on nothing else (not on batch order or on other prompts). Repeat
``r > 0`` of a shuffle (``shuffle_repeats``) seeds ``(seed, prompt_index, s, r)``;
repeat 0 is the single shuffle of earlier runs, unchanged.

:func:`full_permutation` is the follow-up's control (Cheng et al., arXiv
2405.15471, revised): every token moved on its own by a uniformly random
permutation, repeat ``r`` seeded by ``(seed, prompt_index, PERMUTATION_STREAM, r)``;
its rows carry ``shuffle_index = FULL_PERMUTATION``.
"""

from __future__ import annotations

import numpy as np

from geom_jax.errors import ArgumentError, value_error

FULL_PERMUTATION = -1
"""shuffle_index of a row whose tokens are fully permuted (method="permuted")."""
PERMUTATION_STREAM = 0x9E37
"""Third seed word of the full permutations (block shuffles use s <= log4(T) there)."""


def num_blocks(shuffle_index: int) -> int:
    return 4**shuffle_index


def check_divisible(num_tokens: int, max_shuffle: int) -> None:
    """Raises ValueError unless ``num_tokens`` splits into ``4**max_shuffle`` blocks."""
    if max_shuffle < 0:
        raise value_error("max_shuffle", max_shuffle, "must be >= 0")
    blocks = num_blocks(max_shuffle)
    if num_tokens % blocks:
        raise ArgumentError(
            "{max_tokens}={tokens} is not divisible by 4**max_shuffle = {blocks} "
            "({max_shuffle}={s}); choose a multiple of {blocks}, e.g. {example}",
            ("max_tokens", "max_shuffle"),
            tokens=num_tokens,
            blocks=blocks,
            s=max_shuffle,
            example=max(blocks, num_tokens // blocks * blocks),
        )


def block_permutation(
    num_tokens: int, shuffle_index: int, *, seed: int, prompt_index: int, repeat: int = 0
) -> np.ndarray:
    """The token permutation [T] of Algorithm 1 for one prompt, shuffle index
    and repeat (``FULL_PERMUTATION``: :func:`full_permutation`)."""
    if shuffle_index == FULL_PERMUTATION:
        return full_permutation(num_tokens, seed=seed, prompt_index=prompt_index, repeat=repeat)
    check_divisible(num_tokens, shuffle_index)
    blocks = num_blocks(shuffle_index)
    size = num_tokens // blocks
    words = [seed, prompt_index, shuffle_index] + ([repeat] if repeat else [])
    rng = np.random.default_rng(words)
    order = rng.permutation(blocks) if blocks > 1 else np.zeros(1, np.int64)
    return (order[:, None] * size + np.arange(size)[None, :]).reshape(-1)


def full_permutation(num_tokens: int, *, seed: int, prompt_index: int, repeat: int) -> np.ndarray:
    """A uniformly random permutation [T] of the tokens (repeat ``repeat``)."""
    return np.random.default_rng([seed, prompt_index, PERMUTATION_STREAM, repeat]).permutation(
        num_tokens
    )


def shuffle_tokens(
    token_ids: np.ndarray,
    shuffle_index: int,
    *,
    seed: int,
    prompt_index: int,
    keep_first: int = 0,
    repeat: int = 0,
) -> np.ndarray:
    """Applies :func:`block_permutation` to ``token_ids[keep_first:]``.

    ``keep_first`` leaves a prefix (e.g. a BOS token) in place.
    """
    token_ids = np.asarray(token_ids)
    body = token_ids[keep_first:]
    perm = block_permutation(
        body.shape[-1], shuffle_index, seed=seed, prompt_index=prompt_index, repeat=repeat
    )
    return np.concatenate([token_ids[:keep_first], body[perm]])
