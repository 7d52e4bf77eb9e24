"""Checkpoint loaders: safetensors directories, Hub ids, GGUF files; sharded
loading onto a device mesh and converted-parameter checkpoints."""

from . import params_checkpoint
from .assemble import iter_params, load_params
from .errors import (
    MissingPackageError,
    MissingTensorError,
    UnknownModelError,
    UnsupportedArchitectureError,
    UnsupportedQuantizationError,
)
from .gguf_file import SUPPORTED_TYPES as GGUF_TYPES
from .gguf_file import GGUFFile
from .hub import ALIASES, RevisionNotFoundError
from .load import Resolved, load, load_config, load_tokenizer, resolve
from .params_checkpoint import ParamsCheckpointMismatchError
from .safetensors_dir import SafetensorsDir
from .sharded import load_sharded_params

__all__ = [
    "ALIASES",
    "GGUFFile",
    "GGUF_TYPES",
    "MissingPackageError",
    "MissingTensorError",
    "ParamsCheckpointMismatchError",
    "Resolved",
    "RevisionNotFoundError",
    "SafetensorsDir",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "UnsupportedQuantizationError",
    "iter_params",
    "load",
    "load_config",
    "load_params",
    "load_sharded_params",
    "load_tokenizer",
    "params_checkpoint",
    "resolve",
]
