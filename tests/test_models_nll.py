"""`decoder.token_nll` (vocabulary cut into interleaved pieces, sequence
chunks under lax.map) against a float64 NumPy logsumexp over full logits."""

import jax.numpy as jnp
import numpy as np
import pytest

from geom_jax.models import decoder


def reference_nll(h, w, ids, mask):
    logits = np.einsum("btd,vd->btv", h[:, :-1].astype(np.float64), w.astype(np.float64))
    m = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
    tgt = np.take_along_axis(logits, ids[:, 1:, None], -1)[..., 0]
    valid = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
    return np.where(valid, lse - tgt, 0.0), valid


@pytest.mark.parametrize(
    "vocab, pieces, chunk_elements",
    [
        (96, 8, None),  # 8 pieces
        (91, 7, None),  # largest divisor <= 8
        (97, 1, None),  # prime: one piece
        (96, 8, 3 * 96 * 2),  # 2 prompts x 3 tokens per chunk: lax.map over 5 chunks (padded)
    ],
)
def test_token_nll_matches_full_logits(monkeypatch, vocab, pieces, chunk_elements):
    assert decoder._vocab_pieces(vocab) == pieces
    if chunk_elements is not None:
        monkeypatch.setattr(decoder, "NLL_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(vocab)
    B, T, D = 2, 14, 16
    h = rng.standard_normal((B, T, D)).astype(np.float32)
    w = rng.standard_normal((vocab, D)).astype(np.float32)
    ids = rng.integers(0, vocab, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[1, 9:] = 0  # right padding
    nll, valid = decoder.token_nll(
        jnp.asarray(h), jnp.asarray(w), jnp.asarray(ids), jnp.asarray(mask)
    )
    ref, ref_valid = reference_nll(h, w, ids, mask)
    np.testing.assert_array_equal(np.asarray(valid), ref_valid)
    np.testing.assert_allclose(np.asarray(nll), ref, rtol=1e-5, atol=1e-5)
