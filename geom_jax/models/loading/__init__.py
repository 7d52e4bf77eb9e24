"""Checkpoint loaders: safetensors directories, Hub ids, GGUF files."""
from .assemble import iter_params, load_params
from .errors import (MissingPackageError, MissingTensorError, UnknownModelError,
                     UnsupportedArchitectureError, UnsupportedQuantizationError)
from .gguf_file import SUPPORTED_TYPES as GGUF_TYPES, GGUFFile
from .hub import ALIASES
from .load import Resolved, load, load_tokenizer, resolve
from .safetensors_dir import SafetensorsDir
