"""The paper's observables stay bit-identical to the code before the observable registry.

tests/fixtures/paper_pin.npz was written by the code at commit 56b6391 (before
issue 10) from the stored input `hidden` [2, 5, 80, 16] (a duplicate token in
prompt 0, layer 1; prompt 1 padded from token 61): `auto/*` and `c2/*` are
layer_geometry(range_max=32, max_k=8) with automatic and 2-layer chunks,
`pipeline/*` is geometry_from_hidden(range_max=16, max_k=8) on the same
stack read as [L+1, B, T, D] with `token_nll_in`.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from geom_jax import metrics, pipeline

PIN = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "paper_pin.npz"))
PAPER_FIELDS = sorted(k.split("/")[1] for k in PIN.files if k.startswith("auto/"))


def _check(tag, out):
    for field in sorted(k.split("/")[1] for k in PIN.files if k.startswith(tag + "/")):
        np.testing.assert_array_equal(np.asarray(out[field]), PIN[f"{tag}/{field}"], err_msg=field)


@pytest.mark.parametrize("observables", [None, "paper", "all"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_layer_geometry_paper_fields_bit_identical(observables, chunk):
    kw = {} if observables is None else {"observables": observables}
    geo = metrics.layer_geometry(
        PIN["hidden"], PIN["mask"], range_max=32, max_k=8, layer_chunk=chunk, **kw
    )
    _check("auto" if chunk is None else "c2", {f: geo[f] for f in PAPER_FIELDS})


def test_pipeline_paper_fields_bit_identical():
    hid = jnp.asarray(np.moveaxis(PIN["hidden"], 1, 0))
    mask = jnp.asarray(PIN["mask"].astype(np.int32))
    pg = pipeline.geometry_from_hidden(
        hid, jnp.asarray(PIN["token_nll_in"]), mask, range_max=16, max_k=8
    )
    _check("pipeline", pg)
