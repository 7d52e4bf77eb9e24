"""The paper's observables stay what the code before the observable registry gave.

tests/fixtures/paper_pin.npz was written by the code at commit 56b6391 (before
issue 10) from the stored input `hidden` [2, 5, 80, 16] (a duplicate token in
prompt 0, layer 1; prompt 1 padded from token 61): `auto/*` and `c2/*` are
layer_geometry(range_max=32, max_k=8) with automatic and 2-layer chunks,
`pipeline/*` is geometry_from_hidden(range_max=16, max_k=8) on the same
stack read as [L+1, B, T, D] with `token_nll_in`. The goldens come from
another processor, so they compare at the tolerances of tests/helpers/tolerances.py;
the paper's set alone, inside `all` and in layer chunks are one computation
and compare bit for bit in this process (chunks at XLA's default optimisation
level; see the test).
"""

import numpy as np
import pytest
from helpers import subprocess_env, tolerances
from helpers.pinned_outputs import (
    PAPER_FIELDS,
    PIN,
    PIN_FILE,
    PIPELINE_FIELDS,
    golden_atol,
    paper_pin,
    pipeline_pin,
)

INPUTS = {"hidden", "mask", "token_nll_in"}


def _check(tag, out, fields):
    stored = {k.split("/", 1)[1] for k in PIN.files if k.startswith(tag + "/")}
    assert stored == set(fields), f"{tag}: fixture fields {sorted(stored)}, test {sorted(fields)}"
    for field in fields:
        atol = golden_atol(f"{PIN_FILE}:{tag}/{field}")
        tolerances.assert_matches_golden(out[field], PIN[f"{tag}/{field}"], field, f"{tag}/", atol)


def test_fixture_holds_the_tags_the_tests_read():
    tags = {k.split("/", 1)[0] for k in PIN.files if "/" in k}
    assert tags == {"auto", "c2", "pipeline"}
    assert set(PIN.files) - {k for k in PIN.files if "/" in k} == INPUTS
    for field in PAPER_FIELDS:  # chunks change nothing: one golden stands for both
        np.testing.assert_array_equal(PIN[f"c2/{field}"], PIN[f"auto/{field}"], err_msg=field)


@pytest.fixture(scope="module")
def default_run():
    return paper_pin()


@pytest.mark.parametrize("observables", [None, "paper", "all"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_layer_geometry_paper_fields_match_the_pin(default_run, observables, chunk):
    got = paper_pin(observables, chunk)
    # one computation on the same float32 values (set alone, in `all`, in chunks):
    # bit for bit, rank-derived fields included. At the suite's code generation
    # (tests/conftest.py) a chunk's loops may round a reduction's last bit differently,
    # as another code generation does: chunks then compare at the goldens'
    # tolerances here, and bit for bit at every default-level code generation in
    # test_metrics_isa.py.
    for field in PAPER_FIELDS:
        if chunk is None or subprocess_env.at_xla_defaults():
            np.testing.assert_array_equal(got[field], default_run[field], err_msg=field)
        else:
            atol = golden_atol(f"{PIN_FILE}:c2/{field}")
            tolerances.assert_matches_golden(got[field], default_run[field], field, "c2/", atol)
    _check("auto" if chunk is None else "c2", got, PAPER_FIELDS)


def test_pipeline_paper_fields_match_the_pin():
    _check("pipeline", pipeline_pin(), PIPELINE_FIELDS)
