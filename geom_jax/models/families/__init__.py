"""Model families: one module each, registering itself on import.

A family module declares its Hugging Face architecture names, the
config.json keys it handles or knowingly ignores, its config mapping,
parameter layout, GGUF names and presets (`base.Family`), and calls
`base.register`. Adding a family is one module plus one import line below.
"""

from . import (
    base,
    gemma2,  # noqa: F401
    gemma3,  # noqa: F401
    gpt2,  # noqa: F401
    gpt_neox,  # noqa: F401
    llama,  # noqa: F401
    mistral,  # noqa: F401
    olmo2,  # noqa: F401
    opt,  # noqa: F401
    phi3,  # noqa: F401
    qwen2,  # noqa: F401
    qwen3,  # noqa: F401
)
from .base import Family, register, unregister

__all__ = ["Family", "base", "register", "unregister"]
