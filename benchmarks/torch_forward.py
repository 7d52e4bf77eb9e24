"""Hugging Face PyTorch forward with `output_hidden_states=True`: the
reference the JAX ports are checked and benchmarked against (needs the
`baseline` extra: torch, accelerate for GGUF)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass
class TorchForwardOutput:
    """hidden_states: tuple of L+1 tensors [B, T, D] (HF's convention);
    loss: HF's `labels=input_ids` mean loss; logits [B, T, V]."""

    hidden_states: tuple
    loss: object
    logits: object


def _torch_dtype(dtype):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype
    ]


def load_model(name_or_path: str, *, dtype="float32", revision: str | None = None):
    """AutoModelForCausalLM for the same names `geom_jax.models.load` takes:
    aliases (incl. the embedded smollm2-135m GGUF), Hub ids, directories,
    .gguf files (dequantised by transformers, needs accelerate)."""
    import torch  # noqa: F401
    import transformers

    from geom_jax.models.loading.load import resolve

    where = resolve(name_or_path)
    name, kwargs = where.location, dict(dtype=_torch_dtype(dtype))
    if where.kind == "gguf":
        kwargs["gguf_file"] = os.path.basename(name)
        name = os.path.dirname(os.path.abspath(name))
    elif revision:
        kwargs["revision"] = revision
    return transformers.AutoModelForCausalLM.from_pretrained(name, **kwargs).eval()


def random_model(hf_config: dict, *, dtype="float32", seed: int = 0):
    """Random-weight model of an HF config dict (e.g. a geom_jax preset)."""
    import torch
    import transformers

    from geom_jax.models.config import FAMILIES, family_of

    model_type = FAMILIES[family_of(hf_config)].model_type
    fields = {k: v for k, v in hf_config.items() if k != "architectures"}
    config = transformers.AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=_torch_dtype(dtype)).eval()


def model_for(name: str, *, random_weights: bool = False, dtype="float32", seed: int = 0):
    """The HF model a benchmark compares against: `name` loaded, or with
    `random_weights` the random-weight model of its embedded full-size preset."""
    if random_weights:
        from geom_jax.models import presets

        return random_model(presets.HF_CONFIGS[name.lower()], dtype=dtype, seed=seed)
    return load_model(name, dtype=dtype)


def forward(model, input_ids, attention_mask=None) -> TorchForwardOutput:
    """One forward under inference_mode with all hidden states and the loss."""
    import torch

    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long, device=model.device)
    mask = (
        None
        if attention_mask is None
        else torch.as_tensor(np.asarray(attention_mask), dtype=torch.long, device=model.device)
    )
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, labels=ids, output_hidden_states=True)
    return TorchForwardOutput(hidden_states=out.hidden_states, loss=out.loss, logits=out.logits)
