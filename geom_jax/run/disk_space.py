"""A full disk, recognised however it surfaces, and reported in one line.

Python raises ``OSError(ENOSPC)`` (or ``EDQUOT`` over quota); orbax and
tensorstore wrap the same condition in their own exceptions whose text says
``No space left on device`` (under a ``RESOURCE_EXHAUSTED`` status). Either way the run's
checkpoints up to the last complete step are intact (orbax commits a step by
renaming it), so ``--resume`` continues once space is freed.
"""

from __future__ import annotations

import errno
import shutil

from geom_jax.errors import ArgumentError

_MARKERS = ("no space left on device", "disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or anything in its cause / context chain is a full disk."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc).lower()
        if any(m in text for m in _MARKERS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(folder: str) -> int:
    return shutil.disk_usage(folder).free


def full_disk_error(folder: str, needed: int) -> ArgumentError:
    """One line: which folder, how much the run needs there, and that resume continues."""
    try:
        free = f", {_human(free_bytes(folder))} free now"
    except OSError:
        free = ""
    return ArgumentError(
        "no space left on the device holding {folder}: the run needs about {needed} there"
        "{free}; free some space and rerun with {resume} to continue from the last checkpoint",
        "resume",
        folder=folder,
        needed=_human(needed),
        free=free,
    )


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"
