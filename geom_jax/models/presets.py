"""Full-size configurations of common checkpoints, embedded so that
random-weight runs (benchmarks, sharding plans, memory estimates) need no
download.

Each family declares its presets (`families/<family>.py`): the `config.json`
fields of the published checkpoints, passed through `from_hf_config` like any
downloaded config.
"""

from __future__ import annotations

from .config import FAMILIES, DecoderConfig, RegistryView, from_hf_config


def _configs() -> dict[str, dict]:
    return {name: cfg for family in FAMILIES.values() for name, cfg in family.presets.items()}


HF_CONFIGS = RegistryView(_configs)
"""Preset name -> config.json dict, from the registered families."""


def names() -> list[str]:
    return sorted(HF_CONFIGS)


def get(name: str) -> DecoderConfig:
    """The embedded full-size DecoderConfig of `name` (see `names()`)."""
    key = name.lower()
    if key not in HF_CONFIGS:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(names())}")
    return from_hf_config(HF_CONFIGS[key], name=key, checkpoint_id=f"preset:{key}")
