"""Decoder configuration shared by the Llama, Mistral and GPT-NeoX families.

One frozen dataclass describes every supported checkpoint; the per-family
differences (norm type, MLP type, fused QKV, partial rotary, sliding window,
parallel residual) are fields, not subclasses, in the spirit of penzai's
single decoder with per-family configuration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

FAMILIES = ("llama", "mistral", "gpt_neox")
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "GPTNeoXForCausalLM": "gpt_neox",
}
ACTIVATIONS = ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu")
ROPE_TYPES = ("default", "linear", "llama3")


class UnsupportedArchitectureError(ValueError):
    """The checkpoint's architecture or one of its options has no port here."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """HF `rope_scaling` / `rope_parameters`: 'linear' (position interpolation)
    or 'llama3' (Llama 3.1's frequency-dependent smoothing)."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Hyper-parameters of a decoder-only transformer.

    `norm` is 'rms' (Llama, Mistral) or 'layer' (GPT-NeoX, LayerNorm with
    bias); `mlp` is 'gated' (SwiGLU: down(act(gate x) * up x)) or 'plain'
    (down(act(up x + b)) + b). `rotary_dim` <= `head_dim` is the rotated prefix
    of each head (GPT-NeoX `rotary_pct`). `sliding_window` (Mistral) lets query
    i see keys j with i - window < j <= i. `parallel_residual` is GPT-NeoX's
    x + attn(ln1 x) + mlp(ln2 x).
    """

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    norm: str = "rms"
    norm_eps: float = 1e-5
    mlp: str = "gated"
    activation: str = "silu"
    rope_theta: float = 10000.0
    rotary_dim: int | None = None
    rope_scaling: RopeScaling | None = None
    sliding_window: int | None = None
    parallel_residual: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    name: str = ""
    checkpoint_id: str = ""

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise UnsupportedArchitectureError(
                f"unknown family {self.family!r}; supported: {', '.join(FAMILIES)}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.activation not in ACTIVATIONS:
            raise UnsupportedArchitectureError(
                f"unsupported hidden_act {self.activation!r}; supported: {', '.join(ACTIVATIONS)}"
            )
        if self.rotary_dim is None:
            object.__setattr__(self, "rotary_dim", self.head_dim)
        if self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise ValueError(f"rotary_dim={self.rotary_dim} must be even and <= head_dim")

    @property
    def num_groups(self) -> int:
        """Query heads per KV head (grouped-query attention, Ainslie et al. 2023)."""
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes) -> DecoderConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = d * f * (3 if self.mlp == "gated" else 2)
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * (attn + mlp) + embed

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 x matmul parameters (incl. the LM head)
        plus the causal attention QK^T and PV products, averaged over
        positions (Kaplan et al. 2020, PaLM appendix B)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        layer = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads) + d * f * (
            3 if self.mlp == "gated" else 2
        )
        matmul_params = self.num_layers * layer + self.vocab_size * d
        attn = 2 * 2 * self.num_layers * self.num_heads * self.head_dim * (seq_len + 1) / 2
        return 2.0 * matmul_params + attn

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _get(d: Mapping[str, Any], *keys, default=None):
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return default


def _rope(d: Mapping[str, Any]) -> tuple[float, RopeScaling | None, float]:
    """Reads rope theta, scaling and partial-rotary factor from either the
    transformers 5 `rope_parameters` dict or the older top-level keys."""
    params = d.get("rope_parameters") or {}
    if isinstance(params, Mapping) and "rope_theta" not in params and params:
        first = next(iter(params.values()))
        if isinstance(first, Mapping):
            raise UnsupportedArchitectureError("per-layer-type rope_parameters are not supported")
    legacy = d.get("rope_scaling") or {}
    merged = {**legacy, **params}
    theta = float(
        _get(
            merged, "rope_theta", default=_get(d, "rope_theta", "rotary_emb_base", default=10000.0)
        )
    )
    partial = float(
        _get(
            merged,
            "partial_rotary_factor",
            default=_get(d, "partial_rotary_factor", "rotary_pct", default=1.0),
        )
    )
    rope_type = _get(merged, "rope_type", "type", default="default")
    if rope_type not in ROPE_TYPES:
        raise UnsupportedArchitectureError(
            f"unsupported rope_type {rope_type!r}; supported: {', '.join(ROPE_TYPES)}"
        )
    if rope_type == "default":
        return theta, None, partial
    scaling = RopeScaling(
        rope_type=rope_type,
        factor=float(merged["factor"]),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(
            merged.get("original_max_position_embeddings", d.get("max_position_embeddings", 8192))
        ),
    )
    return theta, scaling, partial


def family_of(hf_config: Mapping[str, Any]) -> str:
    """Maps config.json's `architectures` / `model_type` to a family, or raises
    UnsupportedArchitectureError naming what was found."""
    archs = list(hf_config.get("architectures") or [])
    for a in archs:
        if a in ARCHITECTURES:
            return ARCHITECTURES[a]
    model_type = hf_config.get("model_type")
    if not archs and model_type in FAMILIES:
        return model_type
    found = ", ".join(archs) or f"model_type={model_type!r}"
    raise UnsupportedArchitectureError(
        f"unsupported architecture {found}; geom_jax.models supports {', '.join(ARCHITECTURES)}"
    )


def from_hf_config(
    hf_config: Mapping[str, Any] | Any, *, name: str = "", checkpoint_id: str = ""
) -> DecoderConfig:
    """DecoderConfig from a Hugging Face config.json dict (or PretrainedConfig)."""
    d = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    family = family_of(d)
    heads = int(d["num_attention_heads"])
    hidden = int(d["hidden_size"])
    head_dim = int(_get(d, "head_dim", default=hidden // heads))
    theta, scaling, partial = _rope(d)
    common = dict(
        family=family,
        name=name,
        checkpoint_id=checkpoint_id,
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
        head_dim=head_dim,
        intermediate_size=int(d["intermediate_size"]),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        activation=str(_get(d, "hidden_act", "hidden_activation", default="silu")),
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_dim=int(head_dim * partial),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", family != "gpt_neox")),
    )
    if family == "gpt_neox":
        bias = bool(d.get("attention_bias", True))
        return DecoderConfig(
            **common,
            num_kv_heads=heads,
            norm="layer",
            norm_eps=float(d.get("layer_norm_eps", 1e-5)),
            mlp="plain",
            parallel_residual=bool(d.get("use_parallel_residual", True)),
            qkv_bias=bias,
            out_bias=bias,
            mlp_bias=True,
        )
    bias = bool(d.get("attention_bias", False))
    window = d.get("sliding_window") if family == "mistral" else None
    if family == "mistral" and d.get("use_sliding_window") is False:
        window = None
    return DecoderConfig(
        **common,
        num_kv_heads=int(_get(d, "num_key_value_heads", default=heads)),
        norm="rms",
        norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        mlp="gated",
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=bool(d.get("mlp_bias", False)),
        sliding_window=int(window) if window else None,
    )
