"""Flax NNX ports of the Llama, Mistral and GPT-NeoX families that return
every layer's hidden states and per-token losses in one jitted pass.

    model, tokenizer = geom_jax.models.load("smollm2-135m")
    out = model(input_ids, attention_mask)       # DecoderOutput
    graphdef, state = nnx.split(model)           # inside your own jit:
    out = geom_jax.models.forward(graphdef, state, input_ids, attention_mask)
"""
from . import axes, presets
from .axes import LOGICAL_AXES, RULES
from .config import DecoderConfig, RopeScaling, UnsupportedArchitectureError, from_hf_config
from .decoder import Decoder, DecoderOutput, abstract_decoder, forward, init_random, with_params
from .loading import (ALIASES, MissingPackageError, MissingTensorError, UnknownModelError,
                      UnsupportedQuantizationError, Resolved, load, load_tokenizer, resolve)


def from_preset(name: str, *, seed: int = 0, **kwargs) -> Decoder:
    """Random-weight Decoder of an embedded full-size config (see presets.names())."""
    return init_random(presets.get(name), seed=seed, **kwargs)


__all__ = ["ALIASES", "Decoder", "DecoderConfig", "DecoderOutput", "LOGICAL_AXES",
           "MissingPackageError", "MissingTensorError", "RULES", "RopeScaling",
           "UnknownModelError", "UnsupportedArchitectureError", "UnsupportedQuantizationError",
           "abstract_decoder", "axes", "forward", "from_hf_config", "from_preset", "init_random",
           "load", "load_tokenizer", "presets", "resolve", "Resolved", "with_params"]
