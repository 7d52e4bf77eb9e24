"""Decoder configuration shared by every model family.

One frozen dataclass describes every supported checkpoint; the per-family
differences are typed fields (`norm`, `mlp`, `sublayer_norms`, `qk_norm`,
`positions`, ...), not subclasses, in the spirit of penzai's single decoder
with per-family configuration. A family (`geom_jax.models.families`) maps a
Hugging Face config.json onto these fields and registers itself in
`FAMILIES`; `from_hf_config` dispatches on the config's architecture.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

ROPE_TYPES = ("default", "linear", "llama3")

FAMILIES: dict[str, Any] = {}
"""Family name -> `families.Family`, filled as each family module registers."""


class RegistryView(Mapping):
    """A read-only mapping rebuilt from the registry at each access, so that
    families registered later (for example from a test) are seen."""

    def __init__(self, build: Callable[[], dict]):
        self._build = build

    def __getitem__(self, key):
        return self._build()[key]

    def __iter__(self) -> Iterator:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __repr__(self) -> str:
        return repr(self._build())


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


Norm = Literal["rms", "rms_one_plus", "layer"]
Mlp = Literal["gated", "plain"]
Activation = Literal["silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu"]
SublayerNorms = Literal["pre", "post", "pre_post"]
QKNorm = Literal["none", "head", "projection"]
Positions = Literal["rope", "learned"]


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Hyper-parameters of a decoder-only transformer.

    Attributes:
      norm: 'rms' (x / rms(x) * w; Llama), 'rms_one_plus' (x / rms(x) * (1 + w);
        Gemma) or 'layer' (LayerNorm with bias; GPT-NeoX, GPT-2, OPT).
      mlp: 'gated' (down(act(gate x) * up x): SwiGLU, GeGLU) or 'plain'
        (down(act(up x + b)) + b).
      activation: HF ACT2FN name; 'gelu' is exact, the others tanh-approximated.
      sublayer_norms: where each sublayer's norm sits: 'pre' (x + f(n(x))),
        'post' (x + n(f(x)); OLMo 2) or 'pre_post' (x + n2(f(n1(x))); Gemma 2/3).
      final_norm: a norm after the last layer (HF's last hidden state is after it).
      qk_norm: RMS-normalise queries and keys before RoPE, per head ('head';
        Qwen3, Gemma 3) or over the whole projection ('projection'; OLMo 2).
      embed_scale: multiply the token embeddings by sqrt(hidden_size) (Gemma).
      positions: 'rope' (rotary on the first `rotary_dim` features of each head)
        or 'learned' (absolute position embeddings added to the input; GPT-2,
        OPT with `position_offset` 2).
      rope_scaling: 'linear' or Llama 3.1 'llama3' scaling of the global layers.
      sliding_window: query i sees keys i - window < j <= i (Mistral, Gemma) on
        the layers flagged in `sliding_layers` (None: every layer).
      rope_local_theta: the RoPE base of sliding-window layers (Gemma 3); None
        means the global `rope_theta` and scaling.
      attn_softcap, final_softcap: soft-capping c * tanh(x / c) of attention
        scores and of output logits (Gemma 2).
      query_pre_attn_scalar: queries are scaled by its -1/2 power (default
        head_dim; Gemma).
      parallel_residual: GPT-NeoX's x + attn(ln1 x) + mlp(ln2 x).
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
    norm: Norm = "rms"
    norm_eps: float = 1e-5
    mlp: Mlp = "gated"
    activation: Activation = "silu"
    sublayer_norms: SublayerNorms = "pre"
    final_norm: bool = True
    qk_norm: QKNorm = "none"
    embed_scale: bool = False
    positions: Positions = "rope"
    position_offset: int = 0
    rope_theta: float = 10000.0
    rotary_dim: int | None = None
    rope_scaling: RopeScaling | None = None
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] | None = None
    rope_local_theta: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    query_pre_attn_scalar: float | None = None
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
        for field, choices in _CHOICES.items():
            value = getattr(self, field)
            if value not in choices:
                raise UnsupportedArchitectureError(
                    f"unsupported {field}={value!r} for family {self.family!r}; "
                    f"supported: {', '.join(map(str, choices))}"
                )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.rotary_dim is None:
            object.__setattr__(self, "rotary_dim", self.head_dim if self.positions == "rope" else 0)
        if self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise ValueError(f"rotary_dim={self.rotary_dim} must be even and <= head_dim")
        if self.sliding_layers is not None:
            object.__setattr__(self, "sliding_layers", tuple(bool(x) for x in self.sliding_layers))
            if len(self.sliding_layers) != self.num_layers:
                raise ValueError(
                    f"sliding_layers has {len(self.sliding_layers)} entries for "
                    f"num_layers={self.num_layers}"
                )
            if self.sliding_window is None and any(self.sliding_layers):
                raise ValueError("sliding_layers flags layers but sliding_window is None")

    @property
    def num_groups(self) -> int:
        """Query heads per KV head (grouped-query attention, Ainslie et al. 2023)."""
        return self.num_heads // self.num_kv_heads

    @property
    def layer_is_local(self) -> tuple[bool, ...]:
        """Per layer: does it use the sliding window?"""
        if self.sliding_window is None:
            return (False,) * self.num_layers
        return self.sliding_layers or (True,) * self.num_layers

    def replace(self, **changes) -> DecoderConfig:
        return dataclasses.replace(self, **changes)

    def _layer_matmul_params(self) -> int:
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        return attn + d * f * (3 if self.mlp == "gated" else 2)

    def num_params(self) -> int:
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        if self.positions == "learned":
            embed += (self.max_position_embeddings + self.position_offset) * self.hidden_size
        return self.num_layers * self._layer_matmul_params() + embed

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 x matmul parameters (incl. the LM head)
        plus the causal attention QK^T and PV products, averaged over
        positions (Kaplan et al. 2020, PaLM appendix B)."""
        matmul_params = self.num_layers * self._layer_matmul_params()
        matmul_params += self.vocab_size * self.hidden_size
        attn = 2 * 2 * self.num_layers * self.num_heads * self.head_dim * (seq_len + 1) / 2
        return 2.0 * matmul_params + attn

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    name: typing.get_args(hint)
    for name, hint in typing.get_type_hints(DecoderConfig).items()
    if typing.get_origin(hint) is Literal
}


def family_of(hf_config: Mapping[str, Any]) -> str:
    """Maps config.json's `architectures` / `model_type` to a registered
    family, or raises UnsupportedArchitectureError naming what was found."""
    archs = list(hf_config.get("architectures") or [])
    for a in archs:
        for name, family in FAMILIES.items():
            if a in family.architectures:
                return name
    model_type = hf_config.get("model_type")
    if not archs:
        for name, family in FAMILIES.items():
            if model_type in family.model_types:
                return name
    found = ", ".join(archs) or f"model_type={model_type!r}"
    supported = ", ".join(a for f in FAMILIES.values() for a in f.architectures)
    raise UnsupportedArchitectureError(
        f"unsupported architecture {found}; geom_jax.models supports {supported}"
    )


def from_hf_config(
    hf_config: Mapping[str, Any] | Any, *, name: str = "", checkpoint_id: str = ""
) -> DecoderConfig:
    """DecoderConfig from a Hugging Face config.json dict (or PretrainedConfig),
    through the family that claims its architecture.

    Raises:
      UnsupportedArchitectureError: no family claims the architecture, a key
        the family neither handles nor ignores has a non-default value, or a
        handled key has a value the port does not implement.
    """
    d = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    family = FAMILIES[family_of(d)]
    return family.decoder_config(d, name=name, checkpoint_id=checkpoint_id)
