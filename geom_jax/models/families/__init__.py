"""Model families: one module each, registering itself on import.

A family module declares its Hugging Face architecture names, the
config.json keys it handles or knowingly ignores, its config mapping,
parameter layout, GGUF names and presets (`family.Family`), and calls
`family.register`; `hf_config` holds the config.json readers they share and
`llamalike` the Llama-like mapping and layout. Adding a family is one module
plus one import line below.
"""

from . import (
    family,
    gemma2,  # noqa: F401
    gemma3,  # noqa: F401
    gpt2,  # noqa: F401
    gpt_neox,  # noqa: F401
    hf_config,
    llama,  # noqa: F401
    llamalike,
    mistral,  # noqa: F401
    olmo2,  # noqa: F401
    opt,  # noqa: F401
    phi3,  # noqa: F401
    qwen2,  # noqa: F401
    qwen3,  # noqa: F401
)
from .family import Family, register, unregister

__all__ = ["Family", "family", "hf_config", "llamalike", "register", "unregister"]
