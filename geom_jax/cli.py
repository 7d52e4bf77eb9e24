"""Start-up of the command-line tools: hide import-time noise that is not the user's concern.

XLA's probe for a TPU (``Unable to initialize backend 'tpu'``, logged at INFO
by jax's backend discovery, which absl prints) and transformers' "PyTorch was
not found" advisory (geom-jax uses transformers only for tokenizers) are
silenced; real warnings and errors still show.
"""

from __future__ import annotations

import logging
import os


def quiet_startup() -> None:
    """Call before jax or transformers initialise (top of a script)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
