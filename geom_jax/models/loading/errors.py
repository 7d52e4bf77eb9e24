"""Exceptions raised by the loaders; each names what was not understood."""

from ..config import UnsupportedArchitectureError


class UnknownModelError(ValueError):
    """Neither an existing path, a known alias, nor a Hub id."""


class UnsupportedQuantizationError(ValueError):
    """A GGUF tensor uses a ggml type this loader does not dequantise."""


class MissingTensorError(KeyError):
    """A checkpoint lacks a tensor the configuration requires."""


class CorruptFileError(ValueError):
    """A checkpoint file is truncated or damaged; the message names file, size and offset."""


class MissingPackageError(ImportError):
    """An optional package that holds a model file is not installed."""


__all__ = [
    "CorruptFileError",
    "UnsupportedArchitectureError",
    "UnknownModelError",
    "UnsupportedQuantizationError",
    "MissingTensorError",
    "MissingPackageError",
]
