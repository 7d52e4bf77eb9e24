"""Flax NNX ports of decoder-only model families (Llama, Mistral, GPT-NeoX,
Qwen2/2.5, Qwen3, Gemma 2, Gemma 3, OLMo 2, Phi-3, GPT-2, OPT; one module
each in `families/`) that return every layer's hidden states and per-token
losses in one jitted pass.

    model, tokenizer = geom_jax.models.load("smollm2-135m")
    out = model(input_ids, attention_mask)       # DecoderOutput
    graphdef, state = nnx.split(model)           # inside your own jit:
    out = geom_jax.models.forward(graphdef, state, input_ids, attention_mask)

Sharded onto a ('data', 'model') mesh, through a converted-parameter checkpoint:

    mesh = jax.make_mesh((1, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    geom_jax.models.check_mesh(geom_jax.models.presets.get("llama-3-8b"), mesh)
    model, tokenizer = geom_jax.models.load("llama-3-8b", param_dtype=jnp.bfloat16,
                                            mesh=mesh, params_checkpoint="/ckpt/llama-3-8b")
"""

from . import families  # noqa: I001  (registers every family first)
from . import axes, partition, presets
from .axes import LOGICAL_AXES, RULES, fsdp_rules
from .config import DecoderConfig, RopeScaling, UnsupportedArchitectureError, from_hf_config
from .decoder import Decoder, DecoderOutput, abstract_decoder, forward, init_random, with_params
from .loading import (
    ALIASES,
    MissingPackageError,
    MissingTensorError,
    Resolved,
    RevisionNotFoundError,
    UnknownModelError,
    UnsupportedQuantizationError,
    load,
    load_config,
    load_tokenizer,
    resolve,
)
from .loading.params_checkpoint import ParamsCheckpointMismatchError
from .partition import MeshMismatchError, check_mesh, param_shardings
from .pooling import POOLS, check_pool, pool_hidden, row_loss
from .random_init import RandomInit, initializer_range, load_random


__all__ = [
    "ALIASES",
    "Decoder",
    "DecoderConfig",
    "DecoderOutput",
    "LOGICAL_AXES",
    "MeshMismatchError",
    "MissingPackageError",
    "MissingTensorError",
    "POOLS",
    "ParamsCheckpointMismatchError",
    "RULES",
    "RandomInit",
    "RopeScaling",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "UnsupportedQuantizationError",
    "abstract_decoder",
    "axes",
    "families",
    "check_mesh",
    "forward",
    "from_hf_config",
    "fsdp_rules",
    "init_random",
    "initializer_range",
    "load",
    "load_config",
    "load_random",
    "load_tokenizer",
    "param_shardings",
    "partition",
    "check_pool",
    "pool_hidden",
    "presets",
    "resolve",
    "Resolved",
    "RevisionNotFoundError",
    "row_loss",
    "with_params",
]
