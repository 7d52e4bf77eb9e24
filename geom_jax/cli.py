"""Start-up of the command-line tools: hide import-time noise that is not the user's concern.

XLA's probe for a TPU (``Unable to initialize backend 'tpu'``, logged at INFO
by jax's backend discovery, which absl prints) and transformers' "PyTorch was
not found" advisory (geom-jax uses transformers only for tokenizers) are
silenced; real warnings and errors still show.
"""

from __future__ import annotations

import logging
import os
import sys


def quiet_startup() -> None:
    """Call before jax or transformers initialise (top of a script)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def without_torch() -> None:
    """Run as an install without torch does, whether or not torch is installed.

    transformers, which geom-jax uses for tokenizers only, imports torch at import
    time when it finds it (1.8 s and 0.2 GB per process on the development
    machine); torch then looks absent to it, as in a `make run` install. For a
    tool's ``__main__`` only: a later ``import torch`` in this process fails.
    """
    if "torch" not in sys.modules:
        sys.modules["torch"] = None
