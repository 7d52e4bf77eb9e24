"""The computations whose outputs tests/fixtures pins, shared by the pin tests
and by test_metrics_isa.py, which runs them under another XLA:CPU instruction
set: ``PYTHONPATH=.:tests python tests/helpers/pinned_outputs.py OUT.npz`` writes
pinned() under the goldens' keys (``FILE:KEY``) plus the paper pin in 2-layer chunks
(``chunk2/FIELD``) and the matrix entropies of ``oracle_batch``
(``entropy:alpha=A``).

* paper_pin.npz (tests/test_metrics_paper_pin.py): layer_geometry and the
  pipeline on the stored stack `hidden`.
* layer_geometry_pre_issue13.npz (tests/test_metrics_degenerate.py):
  layer_geometry on four clouds regenerated from fixed seeds.
"""

import functools
import os
import sys

import jax.numpy as jnp
import numpy as np

from geom_jax import metrics, pipeline
from helpers import tolerances

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
PIN_FILE = "paper_pin.npz"
DEGENERATE_FILE = "layer_geometry_pre_issue13.npz"
PIN = np.load(os.path.join(FIXTURES, PIN_FILE))

PAPER_FIELDS = (
    "gride_ids",
    "gride_errs",
    "gride_scales",
    "twonn",
    "twonn_ml",
    "overlap",
    "cos_mean",
    "cos_std",
    "n_unique",
)
PIPELINE_FIELDS = (
    "gride_ids",
    "gride_errs",
    "gride_scales",
    "twonn",
    "overlap",
    "cos_mean",
    "cos_std",
    "loss",
    "token_nll",
)
DEGENERATE_FIELDS = PAPER_FIELDS
ENTROPY_ALPHAS = (1.0, 3.0)


def paper_pin(observables=None, chunk=None):
    """layer_geometry(range_max=32, max_k=8) of the pin's stack: {field: array}."""
    kw = {} if observables is None else {"observables": observables}
    geo = metrics.layer_geometry(
        PIN["hidden"], PIN["mask"], range_max=32, max_k=8, layer_chunk=chunk, **kw
    )
    return {f: np.asarray(geo[f]) for f in PAPER_FIELDS}


def pipeline_pin():
    """geometry_from_hidden(range_max=16, max_k=8) of the stack read as [L+1, B, T, D]."""
    hid = jnp.asarray(np.moveaxis(PIN["hidden"], 1, 0))
    mask = jnp.asarray(PIN["mask"].astype(np.int32))
    pg = pipeline.geometry_from_hidden(
        hid, jnp.asarray(PIN["token_nll_in"]), mask, options=dict(range_max=16, max_k=8)
    )
    return {f: np.asarray(pg[f]) for f in PIPELINE_FIELDS}


SHIPPED = {}
"""Inputs read from the file the calling test wrote (``python pinned_outputs.py OUT
INPUTS``). NumPy's float32 sin, cos and tanh follow its SIMD dispatch level to the
last ulp (the curve's pair closer than 1e-5 R then moves its GRIDE ID by 2e-5), so a
run under a lowered NPY_DISABLE_CPU_FEATURES computes on the caller's inputs rather
than regenerating its own."""


def _inputs(name, make):
    """make()'s arrays, or those SHIPPED under name."""
    if f"{name}/0" not in SHIPPED:
        return make()
    count = sum(k.startswith(f"{name}/") for k in SHIPPED)
    return tuple(SHIPPED[f"{name}/{i}"] for i in range(count))


def write_inputs(path):
    """Every generated input of this module (and of the blocked comparison) into path."""
    import test_metrics_blocked as blocked  # noqa: PLC0415

    makers = {"ordinary": _ordinary_arrays, "oracle": _oracle_arrays}
    arrays = {f"{n}/{i}": a for n, make in makers.items() for i, a in enumerate(make())}
    arrays.update({"blocked/0": blocked.STACK, "blocked/1": blocked.MASK})
    np.savez(path, **arrays)


CURVE_FILE = "curve_points.npz"


def regenerated_curve():
    """The dense 1-d curve [1, 3, 300, 4] from its seed: (cos 6t, sin 6t, t, 0) in
    float32, t the seed's second draw. NumPy's float32 cos and sin follow its SIMD
    dispatch level to the last ulp, and the curve's pair closer than 1e-5 R moves its
    first GRIDE scale by 2e-5 with one ulp."""
    rng = np.random.default_rng(0)
    rng.standard_normal((2, 4, 64, 16))
    t = rng.uniform(size=(1, 3, 300, 1)).astype(np.float32)
    return np.concatenate([np.cos(6 * t), np.sin(6 * t), t, 0 * t], -1).astype(np.float32)


def stored_curve():
    """regenerated_curve() as NumPy 2.4's X86_V3 (AVX2) dispatch made it
    (tests/fixtures/curve_points.npz, written by ``PYTHONPATH=.:tests python
    tests/helpers/pinned_outputs.py --write-curve``): the same points on every processor
    and NumPy level."""
    with np.load(os.path.join(FIXTURES, CURVE_FILE)) as z:
        return z["curve"]


def _ordinary_arrays():
    """(h, mask, curve, big) of ordinary_cases, from fixed seeds."""
    rng = np.random.default_rng(0)
    h = rng.standard_normal((2, 4, 64, 16)).astype(np.float32)
    mask = np.ones((2, 64), bool)
    mask[0, 50:] = False
    rng.uniform(size=(1, 3, 300, 1))  # the curve's parameter: stored, see stored_curve
    curve = stored_curve()
    big = (rng.standard_normal((1, 3, 256, 64)) * 30 + 5).astype(np.float32)
    big[..., 3] *= 100  # a massive-activation dimension, as LLM hidden states have
    return h, mask, curve, big


def ordinary_cases():
    """Inputs of the pre-issue-13 goldens (regenerated here from fixed seeds)."""
    h, mask, curve, big = _inputs("ordinary", _ordinary_arrays)
    return {
        "gauss": (h, None, dict(range_max=32, max_k=8)),
        "masked": (h, mask, dict(range_max=16, max_k=8)),
        "curve": (curve, None, dict(range_max=64, max_k=16)),
        "massive": (big, None, dict(range_max=128, max_k=32, layer_chunk=2)),
    }


def ordinary_geometry(name, x, mask, kw):
    """layer_geometry of one ordinary case as the goldens were made: the dense
    curve holds a genuine pair closer than the default duplicate tolerance, so
    it runs with the test off."""
    tol = 0.0 if name == "curve" else metrics.DUPLICATE_TOLERANCE
    return metrics.layer_geometry(x, mask, duplicate_tolerance=tol, **kw)


def cloud(rng, n, d_int, d, offset=0.0):
    z = rng.standard_normal((n, d_int))
    x = np.tanh(z @ rng.standard_normal((d_int, d))) + 0.3 * np.sin(
        z @ rng.standard_normal((d_int, d))
    )
    return (x + 0.01 * rng.standard_normal((n, d)) + offset).astype(np.float32)


def oracle_batch():
    """Clouds [2, 120, 10] with a large offset; the second padded after 90 tokens."""
    return _inputs("oracle", _oracle_arrays)


def _oracle_arrays():
    """(x, mask) of oracle_batch, from a fixed seed."""
    rng = np.random.default_rng(3)
    x = np.stack([cloud(rng, 120, 3, 10, 20.0), cloud(rng, 120, 4, 10, -5.0)])
    mask = np.ones((2, 120), bool)
    mask[1, 90:] = False
    x[1, 90:] = rng.standard_normal((30, 10)) * 100  # padding garbage
    return x, mask


CROSS_ISA_CASES = ("curve", "massive")
"""The ordinary cases pinned() runs: the longest reductions (300 and 256 points, 64
coordinates, layer chunks); gauss and masked (64 points, 16 coordinates, a mask) add
nothing the paper pin (80 points, 16 coordinates, a mask) does not cover, at ~6 s of
compilation each."""


def pinned():
    """The pinned outputs test_metrics_isa.py compares across instruction sets,
    keyed as goldens() is: every field of every golden file, the paper pin's
    `auto` and `pipeline` tags and the CROSS_ISA_CASES. The pin's `c2` goldens
    (2-layer chunks) equal its `auto` ones bit for bit and chunks do not change
    the result in one process (both asserted in test_metrics_paper_pin.py)."""
    out = {f"{PIN_FILE}:auto/{f}": v for f, v in paper_pin().items()}
    for f, v in pipeline_pin().items():
        out[f"{PIN_FILE}:pipeline/{f}"] = v
    cases = ordinary_cases()
    for name in CROSS_ISA_CASES:
        x, mask, kw = cases[name]
        geo = ordinary_geometry(name, x, mask, kw)
        for f in DEGENERATE_FIELDS:
            out[f"{DEGENERATE_FILE}:{name}/{f}"] = np.asarray(getattr(geo, f))
    return out


def goldens():
    """The stored goldens pinned() reproduces, keyed FILE:KEY."""
    out = {f"{PIN_FILE}:auto/{f}": PIN[f"auto/{f}"] for f in PAPER_FIELDS}
    out.update({f"{PIN_FILE}:pipeline/{f}": PIN[f"pipeline/{f}"] for f in PIPELINE_FIELDS})
    with np.load(os.path.join(FIXTURES, DEGENERATE_FILE)) as z:
        for name in CROSS_ISA_CASES:
            out.update(
                {f"{DEGENERATE_FILE}:{name}/{f}": z[f"{name}/{f}"] for f in DEGENERATE_FIELDS}
            )
    return out


def _n_unique_atol(x, mask, tolerance=metrics.DUPLICATE_TOLERANCE):
    """[B, L] n_unique_atol of every cloud of x [B, L, N, D] (mask [B, N] or None)."""
    masks = [None] * len(x) if mask is None else mask
    return np.array(
        [[tolerances.n_unique_atol(layer, m, tolerance) for layer in h] for h, m in zip(x, masks)]
    )


@functools.cache
def _rank_atols():
    """The rank rules' tolerances (tests/helpers/tolerances.py) of the goldens' rank-derived
    fields, keyed FILE:KEY: overlap_atol and n_unique_atol of their clouds."""
    pin = tolerances.overlap_atol(PIN["hidden"], PIN["mask"], 8)
    out = {f"{PIN_FILE}:{tag}/overlap": pin for tag in ("auto", "c2")}
    out[f"{PIN_FILE}:pipeline/overlap"] = pin[:, 1:]  # the pipeline drops the embedding
    unique = _n_unique_atol(PIN["hidden"], PIN["mask"])
    out.update({f"{PIN_FILE}:{tag}/n_unique": unique for tag in ("auto", "c2")})
    for name, (x, mask, kw) in ordinary_cases().items():
        out[f"{DEGENERATE_FILE}:{name}/overlap"] = tolerances.overlap_atol(x, mask, kw["max_k"])
        tol = 0.0 if name == "curve" else metrics.DUPLICATE_TOLERANCE  # ordinary_geometry's
        out[f"{DEGENERATE_FILE}:{name}/n_unique"] = _n_unique_atol(x, mask, tol)
    return out


def golden_atol(key):
    """The atol assert_matches_golden needs for the golden FILE:KEY: the rank rule
    of its clouds (overlap_atol, n_unique_atol) for a rank-derived field, else 0."""
    return _rank_atols().get(key, 0.0)


def entropies():
    """matrix_entropy of oracle_batch() at ENTROPY_ALPHAS, keyed entropy:alpha=A."""
    x, mask = oracle_batch()
    return {
        f"entropy:alpha={a}": np.asarray(metrics.matrix_entropy(x, mask, entropy_alpha=a))
        for a in ENTROPY_ALPHAS
    }


def blocked_and_dense():
    """tests/test_metrics_blocked.py's host-all comparison: both neighbour paths on its
    stack (ties, duplicates, near-duplicates, padding, partial blocks), keyed
    blocked/FIELD and dense/FIELD."""
    import test_metrics_blocked as blocked  # noqa: PLC0415  (its stack and options)

    stack = (SHIPPED["blocked/0"], SHIPPED["blocked/1"]) if "blocked/0" in SHIPPED else None
    out = {}
    for path in ("dense", "blocked"):
        geo = blocked._geometry(path, "host", "all", stack=stack)
        out.update({f"{path}/{f}": np.asarray(geo[f]) for f in geo})
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-curve"]:
        np.savez_compressed(os.path.join(FIXTURES, CURVE_FILE), curve=regenerated_curve())
        sys.exit(0)
    if len(sys.argv) > 2:
        with np.load(sys.argv[2]) as z:
            SHIPPED.update(z)
    chunked = {f"chunk2/{f}": v for f, v in paper_pin(chunk=2).items()}
    np.savez(sys.argv[1], **pinned(), **chunked, **entropies(), **blocked_and_dense())
