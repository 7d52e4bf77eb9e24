"""Shared by the tests that run whole experiments on the tiny model."""

import contextlib
import os
import re

import pytest

from geom_jax import run as geom_run
from geom_jax.run import flags as run_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "token_geometry.py")
PLOT_SCRIPT = os.path.join(ROOT, "experiments", "plot_geometry.py")


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
    return geom_run.RunSpec(**base)


@contextlib.contextmanager
def raises_user_error(pattern):
    """A run refused with a UserError whose command-line rendering (arguments as
    --flags, what token_geometry.py prints) matches ``pattern``."""
    with pytest.raises(geom_run.UserError) as info:
        yield info
    text = run_flags.message(info.value)
    assert re.search(pattern, text), text
