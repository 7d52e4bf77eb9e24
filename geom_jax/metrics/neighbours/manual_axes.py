"""Helpers for running inside shard_map (varying manual axes)."""

import jax
from jax import lax


def varying_axes(a):
    """Mesh axes over which `a` varies inside shard_map (empty outside)."""
    aval = jax.typeof(a)
    manual = getattr(aval, "manual_axis_type", None)
    if manual is not None:
        return frozenset(getattr(manual, "varying", ()) or ())
    return frozenset(getattr(aval, "vma", ()) or ())


def like(value, ref):
    """Mark `value` (e.g. a loop's initial carry or a callback result) as varying like `ref`."""
    missing = tuple(sorted(varying_axes(ref) - varying_axes(value)))
    return lax.pcast(value, missing, to="varying") if missing else value
