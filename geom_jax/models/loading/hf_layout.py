"""Where each Decoder parameter comes from in a Hugging Face state dict.

`param_specs(cfg)` lists, for every parameter path of the NNX state, the HF
tensor name (with `{i}` for the layer) and the `Layout` (a NumPy transform
that also maps shards back to slices of the HF tensor) into our layout, as
the config's family declares them (`families/<family>.py`). HF Linear
weights are [out, in]; ours are [in, ...out] so every matmul is x @ W
without a transpose at run time.
"""

from __future__ import annotations

import dataclasses

from ..config import FAMILIES, DecoderConfig
from .layout import Layout


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    path: tuple[str, ...]
    source: str
    transform: Layout
    stacked: bool


def param_specs(cfg: DecoderConfig) -> list[ParamSpec]:
    return FAMILIES[cfg.family].params(cfg)
