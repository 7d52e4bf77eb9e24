"""The fused-weight layouts of issue 11 (Phi-3's q|k|v and gate|up rows,
GPT-2's Conv1D) against NumPy slicing, whole and shard by shard."""

import itertools

import numpy as np
import pytest

from geom_jax.models.loading import layout as lay


def _ranges(n):
    return [slice(a, b) for a in range(n) for b in range(a + 1, n + 1)] + [slice(None)]


def test_fused_layouts_equal_numpy_slicing():
    w = np.random.default_rng(0).standard_normal((30, 5))
    np.testing.assert_array_equal(lay.rows(12, 2, 3)(w), w[12:18].T.reshape(5, 2, 3))
    np.testing.assert_array_equal(lay.rows(24, 6)(w), w[24:30].T)
    c = np.random.default_rng(1).standard_normal((5, 36))  # Conv1D [in, 3 * H * hd]
    np.testing.assert_array_equal(lay.conv1d(4, 3, pick=2)(c), c[:, 24:36].reshape(5, 4, 3))
    b = np.arange(36.0)
    np.testing.assert_array_equal(lay.conv1d_bias(4, 3, pick=1)(b), b[12:24].reshape(4, 3))
    with pytest.raises(ValueError, match="exceed"):
        lay.rows(28, 2, 3)(w)


@pytest.mark.parametrize(
    "layout,shape",
    [
        (lay.rows(0, 4, 3), (30, 5)),
        (lay.rows(12, 2, 3), (30, 5)),
        (lay.rows(18, 12), (30, 5)),
        (lay.conv1d(4, 3, pick=1), (5, 36)),
        (lay.conv1d_bias(4, 3, pick=2), (36,)),
        (lay.conv1d(4, 2), (5, 8)),
    ],
)
def test_fused_layouts_read_exactly_the_shard(layout, shape):
    w = np.random.default_rng(0).standard_normal(shape)
    full = layout(w)
    for index in itertools.product(*[_ranges(n)[::2] for n in full.shape]):
        np.testing.assert_array_equal(layout.read(w, shape, index), full[index])
