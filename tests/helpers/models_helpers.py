"""Shared helpers for the model tests: random HF checkpoints and comparisons."""

from __future__ import annotations

import numpy as np


def randomize_(model, seed: int = 0, std: float = 0.05):
    """Gives every parameter (incl. biases and norm weights, which HF
    initialises to constants) random values, so the comparison sees them."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + noise)
            elif p.ndim == 1:
                p.copy_(noise)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[-1] ** 0.5))
    return model


def save_random_hf(config, path, seed: int = 0, **save_kwargs):
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model = randomize_(model.eval(), seed)
    model.save_pretrained(path, safe_serialization=True, **save_kwargs)
    return model


def hf_reference(model, ids, mask=None):
    """hidden_states [L+1, B, T, D], token NLL [B, T-1], loss, logits (float64 numpy)."""
    import torch

    ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    mask_t = None if mask is None else torch.as_tensor(np.asarray(mask), dtype=torch.long)
    with torch.no_grad():
        out = model(ids_t, attention_mask=mask_t, labels=ids_t, output_hidden_states=True)
        logp = torch.log_softmax(out.logits[:, :-1].double(), dim=-1)
        nll = -logp.gather(-1, ids_t[:, 1:, None])[..., 0]
    hs = np.stack([h.double().numpy() for h in out.hidden_states])
    return hs, nll.numpy(), float(out.loss), out.logits.double().numpy()


def layer_rel_err(a, b):
    """Per layer: max |a - b| / max |b|."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    axes = tuple(range(1, a.ndim))
    return np.max(np.abs(a - b), axis=axes) / np.max(np.abs(b), axis=axes)
