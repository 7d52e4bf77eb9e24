"""Pooled rows (issue 22: --pool=last|mean) against Hugging Face PyTorch's
output_hidden_states on the tiny random Llama (float32), padded and unpadded."""

import functools

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers.models_helpers import hf_reference, layer_rel_err  # noqa: E402

import geom_jax.models as gm  # noqa: E402

T = 12
# Rows: full, right-padded to 7 and to 1 token, left-padded (5 tokens at the end),
# and a row of a single valid token in the middle of padding.
MASKS = np.zeros((5, T), np.int32)
MASKS[0] = 1
MASKS[1, :7] = 1
MASKS[2, :1] = 1
MASKS[3, T - 5 :] = 1
MASKS[4, 4] = 1
# float32 forward of 3 layers: HF and JAX agree to ~1e-6 relative per layer.
TOL = 1e-4

pool = jax.jit(gm.pool_hidden, static_argnames="how")


@pytest.fixture(scope="module")
def models_and_ids(tiny):
    model, _ = gm.load(tiny, attn_block=8)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    ids = np.random.default_rng(0).integers(3, 1000, (len(MASKS), T)).astype(np.int32)
    out = model(ids, MASKS)
    return hf, ids, out


@functools.cache
def _alone(hf, row_ids: tuple):
    """HF hidden states [L+1, n, D] of one row's valid tokens run alone (no padding)."""
    hs, _, loss, _ = hf_reference(hf, np.asarray([row_ids]))
    return hs[:, 0], loss


@pytest.mark.parametrize("how", ["last", "mean"])
def test_pooled_rows_match_hf_rows_run_alone(models_and_ids, how):
    hf, ids, out = models_and_ids
    pooled = np.asarray(pool(out.hidden_states, MASKS, how))
    assert pooled.shape == (len(MASKS), out.hidden_states.shape[0], out.hidden_states.shape[-1])
    assert pooled.dtype == np.float32
    for b in range(len(MASKS)):
        hs, _ = _alone(hf, tuple(ids[b][MASKS[b] == 1].tolist()))
        want = hs[:, -1] if how == "last" else hs.mean(axis=1)
        err = layer_rel_err(pooled[b], want)
        assert err.max() < TOL, (b, err)


def test_last_pool_is_hf_padded_batch_at_last_valid_token(models_and_ids):
    hf, ids, out = models_and_ids
    right = [0, 1, 2]  # right padding: HF's valid positions ignore the pads
    hs, _, _, _ = hf_reference(hf, ids[right], MASKS[right])
    pooled = np.asarray(pool(out.hidden_states, MASKS, "last"))
    for b in right:
        last = int(np.flatnonzero(MASKS[b])[-1])
        err = layer_rel_err(pooled[b], hs[:, b, last])
        assert err.max() < TOL, (b, err)


def test_mean_is_exact_float32_mean_over_valid_tokens():
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((3, 4, 6, 5)).astype(np.float32) * 100
    mask = np.array([[1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 0, 1], [1] * 6, [1, 0, 0, 0, 0, 0]])
    got = np.asarray(pool(hidden, mask, "mean"))
    for b in range(4):
        want = hidden[:, b][:, mask[b] == 1].astype(np.float64).mean(axis=1)
        np.testing.assert_allclose(got[b], want, rtol=1e-6, atol=1e-5)
    last = np.asarray(pool(hidden, mask, "last"))
    for b, t in enumerate([2, 5, 5, 0]):
        np.testing.assert_array_equal(last[b], hidden[:, b, t])


def test_empty_rows_are_nan_and_bad_choices_refused():
    hidden = np.ones((2, 2, 3, 4), np.float32)
    mask = np.array([[0, 0, 0], [0, 1, 0]])
    for how in ("last", "mean"):
        got = np.asarray(pool(hidden, mask, how))
        assert np.isnan(got[0]).all() and np.array_equal(got[1], np.ones((2, 4)))
    with pytest.raises(ValueError, match="pool must be one of last, mean, got 'max'"):
        gm.pool_hidden(hidden, mask, "max")
    with pytest.raises(ValueError, match=r"\[B, T\]; got \(2, 2, 3, 4\) and \(3, 2\)"):
        gm.pool_hidden(hidden, mask.T, "last")


def test_row_loss_matches_hf_loss_of_each_row_alone(models_and_ids):
    hf, ids, out = models_and_ids
    loss = np.asarray(gm.row_loss(out.token_nll, MASKS))
    for b in range(len(MASKS)):
        valid = ids[b][MASKS[b] == 1]
        if len(valid) < 2:
            assert np.isnan(loss[b])  # no target to predict
            continue
        _, want = _alone(hf, tuple(valid.tolist()))
        assert abs(loss[b] - want) <= 1e-5 * abs(want), (b, loss[b], want)
