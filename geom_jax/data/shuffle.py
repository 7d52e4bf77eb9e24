"""Block shuffling of token sequences: the paper's Algorithm 1.

Shuffle index ``s`` splits the T tokens into ``4**s`` contiguous blocks of
``T // 4**s`` tokens and permutes the blocks; ``s = 0`` leaves the prompt
intact, and at ``4**s = T`` every token is moved on its own. The permutation
is drawn from a NumPy generator seeded by ``(seed, prompt_index, s)``, so it
depends on nothing else (not on batch order or on other prompts).
"""

from __future__ import annotations

import numpy as np


def num_blocks(shuffle_index: int) -> int:
    return 4**shuffle_index


def check_divisible(num_tokens: int, max_shuffle: int) -> None:
    """Raises ValueError unless ``num_tokens`` splits into ``4**max_shuffle`` blocks."""
    if max_shuffle < 0:
        raise ValueError(f"--max_shuffle must be >= 0, got {max_shuffle}")
    blocks = num_blocks(max_shuffle)
    if num_tokens % blocks:
        raise ValueError(
            f"--max_tokens={num_tokens} is not divisible by 4**max_shuffle = {blocks} "
            f"(--max_shuffle={max_shuffle}); choose a multiple of {blocks}, e.g. "
            f"{max(blocks, num_tokens // blocks * blocks)}"
        )


def block_permutation(
    num_tokens: int, shuffle_index: int, *, seed: int, prompt_index: int
) -> np.ndarray:
    """The token permutation [T] of Algorithm 1 for one prompt and shuffle index."""
    check_divisible(num_tokens, shuffle_index)
    blocks = num_blocks(shuffle_index)
    size = num_tokens // blocks
    rng = np.random.default_rng([seed, prompt_index, shuffle_index])
    order = rng.permutation(blocks) if blocks > 1 else np.zeros(1, np.int64)
    return (order[:, None] * size + np.arange(size)[None, :]).reshape(-1)


def shuffle_tokens(
    token_ids: np.ndarray, shuffle_index: int, *, seed: int, prompt_index: int, keep_first: int = 0
) -> np.ndarray:
    """Applies :func:`block_permutation` to ``token_ids[keep_first:]``.

    ``keep_first`` leaves a prefix (e.g. a BOS token) in place.
    """
    token_ids = np.asarray(token_ids)
    body = token_ids[keep_first:]
    perm = block_permutation(body.shape[-1], shuffle_index, seed=seed, prompt_index=prompt_index)
    return np.concatenate([token_ids[:keep_first], body[perm]])
