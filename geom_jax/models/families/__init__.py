"""Model families: one module each, registering itself on import.

A family module declares its Hugging Face architecture names, the
config.json keys it handles or knowingly ignores, its config mapping,
parameter layout, GGUF names and presets (`base.Family`), and calls
`base.register`. Adding a family is one module plus one import line below.
"""

from . import (
    base,
    gpt_neox,  # noqa: F401
    llama,  # noqa: F401
    mistral,  # noqa: F401
)
from .base import Family, register, unregister

__all__ = ["Family", "base", "register", "unregister"]
