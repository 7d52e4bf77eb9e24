"""Shared test configuration: float32 everywhere, CPU only; the tiny model fixture."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from tiny_model import write_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama checkpoint folder with SmolLM2's tokenizer (tiny_model.py)."""
    return write_tiny_llama(str(tmp_path_factory.mktemp("tiny") / "tiny-llama"))
