"""Options shared by several observables, and the execution engine's own.

Each is declared once here; the observables that read one list it in their
``options``, and every default (``layer_geometry``'s keywords, the public
functions' keywords, the command-line flags) comes from these declarations.
"""

from __future__ import annotations

import functools
import warnings

from geom_jax.errors import ArgumentError
from geom_jax.metrics.declare.observable import Option
from geom_jax.metrics.neighbours.host_selection import SELECTION_METHODS, for_cloud


def renamed_keywords(**former):
    """Decorator of a public function whose keywords were renamed to its options'
    names: ``former="current"`` pairs, each former keyword still accepted with a
    DeprecationWarning (both at once is a TypeError)."""

    def wrap(fn):
        @functools.wraps(fn)
        def accepting_former(*args, **kwargs):
            for old, new in former.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}: {old}= is the former name of {new}=")
                    warnings.warn(
                        f"{fn.__name__}({old}=...) is deprecated; use {new}=",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return accepting_former

    return wrap


def _positive_int(name):
    def check(v):
        if v < 1:
            raise ArgumentError("{" + name + "} must be an integer >= 1, got {v!r}", name, v=v)

    return check


def _tolerance(v):
    if not 0 <= v < 1:
        raise ArgumentError(
            "{duplicate_tolerance} must be in [0, 1), got {v!r}", "duplicate_tolerance", v=v
        )


MAX_K = Option(
    "max_k",
    int,
    32,
    "Length of the exact neighbour lists: neighbourhood sizes k = 1..max_k of the overlap "
    "and the reciprocity.",
    check=_positive_int("max_k"),
)

SELECTION = Option(
    "selection",
    str,
    "auto",
    "Neighbour selection backend: auto (NumPy host selection on CPU for clouds of 49 points "
    "or more, lax.top_k otherwise), host or xla (identical results).",
    choices=SELECTION_METHODS,
    defining=False,
    flag=False,
    resolve=lambda v, n, kind: for_cloud(v, n),
)

DUPLICATE_TOLERANCE = Option(
    "duplicate_tolerance",
    float,
    1e-5,
    "Tokens closer than this times the cloud's RMS norm count as one for the ID estimators "
    "(0 = exact duplicates only; ~1e-2 for bfloat16 activations).",
    check=_tolerance,
)

NEIGHBOUR_PATHS = ("auto", "dense", "blocked", "ring")

NEIGHBOUR_PATH = Option(
    "neighbour_path",
    str,
    "auto",
    "dense: each cloud's N x N Gram matrix; blocked: the same exact neighbours from blocks of "
    "Gram rows, O(N (block + k)) memory; auto: blocked above 4,096 points per cloud or 1 GiB "
    "of Gram matrices per layer chunk; ring (needs a mesh): each cloud's points split over "
    "the mesh's data axis, blocks passed around a ring, O(N / devices (D + k)) memory per "
    "device (identical neighbours, IDs within 1e-6).",
    choices=NEIGHBOUR_PATHS,
    defining=False,
)


def _block_rows(v):
    if v < 1:
        raise ArgumentError(
            "{block_rows} must be a positive integer or None, got {v!r}", "block_rows", v=v
        )


BLOCK_ROWS = Option(
    "block_rows",
    int,
    None,
    "Rows per Gram block of the blocked path (default: about 64 MiB of them).",
    check=_block_rows,
    optional=True,
    defining=False,
)

ENGINE = (SELECTION, DUPLICATE_TOLERANCE, NEIGHBOUR_PATH, BLOCK_ROWS)
"""Options every layer_geometry call has, whatever the observables."""
