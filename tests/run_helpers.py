"""Shared by the tests that run whole experiments on the tiny model."""

import os

from geom_jax import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "token_geometry.py")


def small_spec(model, out, **kw):
    """A RunSpec sized for the tiny model (64 tokens, GRIDE range 16, k = 8, no
    progress bar); ``kw`` sets or overrides any field."""
    base = dict(
        output_dir=str(out),
        model=model,
        max_tokens=64,
        range_max=16,
        max_k=8,
        progress=False,
    )
    base.update(kw)
    return experiment.RunSpec(**base)
