"""The untrained control: a model's architecture with seeded random weights.

Cheng et al. (ICLR 2025, arXiv 2405.15471, Sec. 4) compare each trained
model's geometry with that of the same architecture at initialisation. The
initial weights follow Hugging Face's ``PreTrainedModel._init_weights`` for
Llama-like models (transformers 5): every linear weight and embedding (the
LM head and learned position embeddings too) is drawn from
``N(0, initializer_range)``, untruncated; norm scales start at their identity
(1, or 0 for Gemma's ``(1 + w)`` RMSNorm), norm and linear biases at 0.
Two details of some families are not reproduced: GPT-2's
``1 / sqrt(2 n_layer)`` scaling of its residual projections, and the zeroed
embedding row of a ``pad_token_id``.

``initializer_range`` is, in order: the value passed; the checkpoint's
``config.json`` (a folder or a Hub id); the embedded preset of the same name
(``smollm2-135m``: 1/24 = 0.041666..., from SmolLM2-135M's published
config.json, since its GGUF file does not record it); else transformers'
default 0.02. The weights are a deterministic function of the seed
(``nnx.Rngs(seed)``, drawn on device in the parameters' construction order)
and of the architecture; no weight of the checkpoint is read.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from . import presets
from .decoder import DEFAULT_ATTN_BLOCK, Decoder, abstract_decoder, init_random
from .loading import hub
from .loading.load import Resolved, load_config, load_tokenizer, resolve
from .partition import check_mesh, state_shardings

DEFAULT_INITIALIZER_RANGE = 0.02
"""transformers' ``PretrainedConfig`` default for Llama-like families."""


@dataclasses.dataclass(frozen=True)
class RandomInit:
    """How a random-weight model was made (for metadata.json).

    Attributes:
      seed: seeds ``nnx.Rngs``.
      initializer_range: the standard deviation of the normal weights.
      initializer_range_from: where that value came from.
      architecture_of: the model whose configuration was used.
    """

    seed: int
    initializer_range: float
    initializer_range_from: str
    architecture_of: str

    def metadata(self) -> dict:
        """A JSON-ready record, with the distribution spelled out."""
        return {
            **dataclasses.asdict(self),
            "distribution": (
                f"linear weights and embeddings N(0, {self.initializer_range!r}) (untruncated); "
                "norm scales at identity (1; 0 for (1 + w) norms); biases 0"
            ),
        }


def _config_json(where: Resolved, revision: str | None) -> dict | None:
    if where.kind == "gguf":
        return None
    folder = (
        where.location
        if where.kind == "directory"
        else hub.download(where.location, revision, tokenizer_only=True)
    )
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def initializer_range(name_or_path: str, *, revision: str | None = None) -> tuple[float, str]:
    """The standard deviation of the model's initial weights and where it comes from.

    Args:
      name_or_path: as for :func:`geom_jax.models.load`.
      revision: of a Hub id.

    Returns:
      (initializer_range, a phrase naming its source).
    """
    where = resolve(name_or_path)
    config = _config_json(where, revision)
    if config is not None and config.get("initializer_range") is not None:
        return float(config["initializer_range"]), f"config.json of {where.location}"
    preset = presets.HF_CONFIGS.get(where.name.lower())
    if preset is not None and preset.get("initializer_range") is not None:
        return (
            float(preset["initializer_range"]),
            f"the embedded preset {where.name.lower()} (the published config.json)",
        )
    return DEFAULT_INITIALIZER_RANGE, "transformers' default (the checkpoint does not record it)"


def load_random(
    name_or_path: str,
    *,
    seed: int,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    revision: str | None = None,
    attn_block: int = DEFAULT_ATTN_BLOCK,
    tokenizer: bool = True,
    mesh: Mesh | None = None,
    rules=None,
    init_std: float | None = None,
) -> tuple[Decoder, object, RandomInit]:
    """The architecture of ``name_or_path`` with seeded random weights (module docstring).

    Args:
      name_or_path: any name :func:`geom_jax.models.load` takes; only its
        configuration (and tokenizer) is read.
      seed: the weights' seed (an integer >= 0).
      dtype, param_dtype, revision, attn_block, tokenizer, mesh, rules: as for
        :func:`geom_jax.models.load` (with a mesh, each parameter is drawn in
        its sharding).
      init_std: overrides the standard deviation (default: :func:`initializer_range`).

    Returns:
      (Decoder, tokenizer or None, :class:`RandomInit`); the config's
      checkpoint_id reads ``random-init:seed=<seed>:std=<std>:<name>``.

    Raises:
      ValueError: seed < 0 or init_std <= 0; and what :func:`load_config` raises.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if init_std is not None and not init_std > 0:
        raise ValueError(f"init_std must be positive, got {init_std}")
    where = resolve(name_or_path)
    std, source = (
        (float(init_std), "passed")
        if init_std is not None
        else initializer_range(name_or_path, revision=revision)
    )
    config = load_config(name_or_path, revision=revision).replace(
        checkpoint_id=f"random-init:seed={seed}:std={std!r}:{where.name}"
    )
    shardings = None
    if mesh is not None:
        check_mesh(config, mesh, rules)
        abstract = abstract_decoder(
            config, dtype=dtype, param_dtype=param_dtype, attn_block=attn_block
        )
        shardings = state_shardings(nnx.state(abstract), mesh, rules)
    model = init_random(
        config,
        seed=seed,
        dtype=dtype,
        param_dtype=param_dtype,
        attn_block=attn_block,
        init_std=std,
        out_shardings=shardings,
    )
    tok = load_tokenizer(name_or_path, revision=revision) if tokenizer else None
    return model, tok, RandomInit(seed, std, source, where.name)
