"""Acceptance 5: bad input raises ValueError naming the argument and the prompt / layer."""

import jax
import numpy as np
import pytest

from geom_jax import metrics


def hidden(shape=(2, 3, 64, 8), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_n_too_small_for_max_k():
    with pytest.raises(ValueError, match=r"max_k=32 needs N >= 33"):
        metrics.layer_geometry(hidden((2, 3, 20, 8)), max_k=32, range_max=8)
    with pytest.raises(ValueError, match=r"k=70 needs N >= 71"):
        metrics.knn(hidden((64, 8)), k=70)
    with pytest.raises(ValueError, match=r"max_k=64"):
        metrics.neighbourhood_overlap(hidden((64, 8)), hidden((64, 8), 1), max_k=64)


def test_n_too_small_for_range_max():
    with pytest.raises(ValueError, match=r"range_max=64 with N = 64 .* rank 64"):
        metrics.layer_geometry(hidden(), range_max=64, max_k=8)
    with pytest.raises(ValueError, match=r"range_max=64"):
        metrics.gride(hidden((64, 8)), range_max=64)
    with pytest.raises(ValueError, match=r"range_max must be an integer >= 2"):
        metrics.gride(hidden((64, 8)), range_max=1)
    with pytest.raises(ValueError, match=r"range_max=256"):
        metrics.check_sizes(256, range_max=256, max_k=32)
    assert metrics.check_sizes(257, range_max=256, max_k=32) == 256


def test_default_range_max_is_the_largest_the_cloud_supports():
    assert [metrics.default_range_max(n) for n in (3, 64, 256, 257, 4096)] == [2, 63, 255, 256, 256]
    assert metrics.check_sizes(256, max_k=32) == 255
    assert metrics.gride(hidden((64, 8)))[0].shape == (5,)  # range 63: n2 = 2 .. 32
    geo = metrics.layer_geometry(hidden(), max_k=8)
    assert geo.gride_ids.shape == (2, 3, 5)


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"hidden must have rank >= 3"):
        metrics.layer_geometry(hidden((64, 8)), range_max=8, max_k=4)
    with pytest.raises(ValueError, match=r"x must have rank >= 2"):
        metrics.gride(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 64\)"):
        metrics.layer_geometry(hidden(), np.ones((2, 3, 64), bool), range_max=8, max_k=4)
    with pytest.raises(ValueError, match=r"x and y must hold the same points"):
        metrics.neighbourhood_overlap(hidden((64, 8)), hidden((63, 8)), max_k=4)


def test_non_finite_values_name_prompt_and_layer():
    h = hidden()
    h[1, 2, 17, 3] = np.nan
    with pytest.raises(
        ValueError, match=r"hidden has non-finite values at prompt \(1,\), layer 2, token 17"
    ):
        metrics.validate_hidden(h, range_max=8, max_k=4)
    # layer_geometry reports such a layer as NaN instead (test_metrics_degenerate.py).
    assert np.isnan(np.asarray(metrics.layer_geometry(h, range_max=8, max_k=4).twonn[1, 2]))
    h[1, 2, 17, 3] = np.inf
    with pytest.raises(ValueError, match=r"prompt \(1,\), layer 2"):
        metrics.validate_hidden(h, range_max=8, max_k=4)
    x = hidden((2, 64, 8))
    x[1, 5, 0] = np.inf
    with pytest.raises(ValueError, match=r"x has non-finite values at cloud \(1,\), token 5"):
        metrics.twonn(x)


def test_non_finite_padding_is_allowed():
    h = hidden()
    mask = np.ones((2, 64), bool)
    mask[0, 50:] = False
    h[0, :, 55] = np.nan
    geo = metrics.layer_geometry(h, mask, range_max=8, max_k=4)
    assert np.isfinite(np.asarray(geo.gride_ids)).all()
    assert np.isfinite(np.asarray(geo.cos_mean)).all()


def test_mask_with_too_few_valid_points():
    mask = np.ones((2, 64), bool)
    mask[1, 2:] = False
    with pytest.raises(
        ValueError, match=r"mask has fewer than 3 valid points \(2\) at prompt \(1,\)"
    ):
        metrics.layer_geometry(hidden(), mask, range_max=8, max_k=1)
    mask[1, :10] = True
    with pytest.raises(
        ValueError, match=r"max_k=16 needs >= 17 valid points, but prompt \(1,\) has 10"
    ):
        metrics.layer_geometry(hidden(), mask, range_max=8, max_k=16)
    with pytest.raises(ValueError, match=r"mask has fewer than 3 valid points"):
        metrics.gride(hidden((64, 8)), np.arange(64) < 2, range_max=8)


def test_bad_options():
    with pytest.raises(ValueError, match=r"selection must be one of"):
        metrics.layer_geometry(hidden(), range_max=8, max_k=4, selection="gpu")
    with pytest.raises(ValueError, match=r"layer_chunk"):
        metrics.layer_geometry(hidden(), range_max=8, max_k=4, layer_chunk=0)
    with pytest.raises(ValueError, match=r"discard_fraction"):
        metrics.twonn(hidden((64, 8)), discard_fraction=1.0)


def test_static_checks_still_run_under_jit():
    fn = jax.jit(lambda h: metrics.layer_geometry(h, range_max=8, max_k=80))
    with pytest.raises(ValueError, match=r"max_k=80"):
        fn(hidden())


def test_non_boolean_mask_values_are_refused():
    mask = np.ones(64, np.int32)
    mask[5] = 2
    stack = np.broadcast_to(mask, (2, 64))
    with pytest.raises(ValueError, match=r"mask must be boolean \(or 0/1\)"):
        metrics.layer_geometry(hidden(), stack, range_max=8, max_k=4)
    for fn in (
        lambda m: metrics.knn(hidden((64, 8)), m, k=4),
        lambda m: metrics.gride(hidden((64, 8)), m, range_max=8),
        lambda m: metrics.twonn(hidden((64, 8)), mask=m),
        lambda m: metrics.cosine_similarity_stats(hidden((64, 8)), m),
        lambda m: metrics.neighbourhood_overlap(hidden((64, 8)), hidden((64, 8), 1), m, max_k=4),
    ):
        with pytest.raises(ValueError, match=r"mask must be boolean \(or 0/1\)"):
            fn(mask)
        # 0/1 integers are accepted and mean what the boolean mask means.
        ints = np.minimum(mask, 1)
        ints[40:] = 0
        got, want = jax.tree.leaves(fn(ints)), jax.tree.leaves(fn(ints.astype(bool)))
        unmasked = jax.tree.leaves(fn(np.ones(64, np.int32)))
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
        assert not all(np.array_equal(a, b) for a, b in zip(got, unmasked))


def test_torch_tensors_are_read_through_dlpack_without_a_copy():
    """A torch CPU tensor (any object with __dlpack__ on JAX's default device) is shared
    with JAX, not copied; one DLPack refuses (requires grad) is refused naming it; the
    measures give the NumPy array's numbers."""
    torch = pytest.importorskip("torch")
    from geom_jax.metrics import validation

    x = torch.tensor(hidden((64, 8)))  # torch-allocated: aligned as XLA needs
    points = validation.as_points(x, "x")
    assert isinstance(points, jax.Array)
    assert points.unsafe_buffer_pointer() == x.data_ptr()  # the tensor's own memory
    mask = torch.ones(64, dtype=torch.bool)
    mask[5] = False
    assert metrics.twonn(x, mask) == metrics.twonn(x.numpy(), mask.numpy())
    np.testing.assert_array_equal(
        metrics.cka(x, x * 2 + 1), metrics.cka(x.numpy(), x.numpy() * 2 + 1)
    )
    assert validation.as_points(x.to(torch.bfloat16), "x").dtype == np.float32
    with pytest.raises(ValueError, match=r"^x cannot be read as an array: .*requires grad"):
        metrics.twonn(x.clone().requires_grad_())
    with pytest.raises(ValueError, match="x must be a floating-point array"):
        metrics.twonn(torch.ones(64, 8, dtype=torch.int32))
