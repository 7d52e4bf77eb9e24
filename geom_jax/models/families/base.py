"""What a model family declares, the registry, and the helpers families share.

A family module builds one `Family` and calls `register` on it: the Hugging
Face architecture names it claims, the config.json keys it handles or
knowingly ignores (in the manner of penzai's `handled_or_ignored_attributes`:
any other key with a non-default value is refused, naming key and family),
the mapping of config.json onto `DecoderConfig`, the HF parameter layout, its
GGUF tensor names where llama.cpp has the architecture, and its presets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, get_args

from ..config import (
    FAMILIES,
    ROPE_TYPES,
    Activation,
    DecoderConfig,
    RopeScaling,
    UnsupportedArchitectureError,
)
from ..loading.hf_layout import ParamSpec
from ..loading.layout import SAME, Layout, heads_to_embed, in_out, reshape

ACTIVATIONS = get_args(Activation)

# Keys of every transformers PretrainedConfig that do not change the forward
# (labels, ids, generation and training settings), ignored for every family.
COMMON_IGNORED = frozenset(
    {
        "_name_or_path",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "_commit_hash",
        "add_cross_attention",
        "architectures",
        "attn_implementation",
        "auto_map",
        "bad_words_ids",
        "begin_suppress_tokens",
        "bos_token_id",
        "chunk_size_feed_forward",
        "cross_attention_hidden_size",
        "decoder_start_token_id",
        "diversity_penalty",
        "do_sample",
        "dtype",
        "early_stopping",
        "encoder_no_repeat_ngram_size",
        "eos_token_id",
        "exponential_decay_length_penalty",
        "finetuning_task",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "id2label",
        "initializer_range",
        "init_std",
        "is_decoder",
        "is_encoder_decoder",
        "label2id",
        "length_penalty",
        "max_length",
        "min_length",
        "model_type",
        "no_repeat_ngram_size",
        "num_beam_groups",
        "num_beams",
        "num_return_sequences",
        "output_attentions",
        "output_hidden_states",
        "output_scores",
        "pad_token_id",
        "prefix",
        "problem_type",
        "pruned_heads",
        "remove_invalid_values",
        "repetition_penalty",
        "return_dict",
        "return_dict_in_generate",
        "sep_token_id",
        "suppress_tokens",
        "task_specific_params",
        "temperature",
        "tf_legacy_loss",
        "tie_encoder_decoder",
        "tokenizer_class",
        "top_k",
        "top_p",
        "torch_dtype",
        "torchscript",
        "transformers_version",
        "typical_p",
        "use_bfloat16",
        "use_cache",
    }
)


def _training_only(key: str) -> bool:
    """Dropout rates (any '*dropout*' / '*pdrop' key): identity at inference."""
    return "dropout" in key or key.endswith("pdrop") or key == "layerdrop"


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything family-specific about one architecture.

    Attributes:
      name: the `DecoderConfig.family` label.
      architectures: config.json `architectures` entries claimed.
      model_types: config.json `model_type` values claimed (when
        `architectures` is absent); the first is transformers' model type.
      handled: config.json keys `config` reads or knowingly ignores; any
        other key whose value is not a default (None, False or the entry in
        `defaults`) is refused.
      config: config.json dict -> DecoderConfig keyword arguments.
      params: DecoderConfig -> the HF tensor name and layout of each parameter.
      defaults: transformers defaults of keys the family does not handle.
      gguf_architecture: the GGUF `general.architecture` this family reads
        (only 'llama' so far: Llama, Mistral and SmolLM GGUFs).
      gguf_names: llama.cpp tensor name -> HF name (`{i}` for the layer).
      base_prefix: the prefix of the base model's tensor names in the
        *ForCausalLM state dict ('transformer.' for GPT-2), for checkpoints
        saved from the base model without it.
      presets: preset name -> full-size config.json dict.
      aliases: preset name -> Hub id, for `load(alias)`.
    """

    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    handled: frozenset[str]
    config: Callable[[dict[str, Any]], dict[str, Any]]
    params: Callable[[DecoderConfig], list[ParamSpec]]
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    base_prefix: str = ""
    gguf_architecture: str = ""
    gguf_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    presets: Mapping[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return self.model_types[0]

    def unhandled(self, d: Mapping[str, Any]) -> list[str]:
        """Keys of `d` that this family neither handles nor ignores and whose
        value differs from the default."""
        out = []
        for key, value in d.items():
            if key in self.handled or key in COMMON_IGNORED or _training_only(key):
                continue
            if key in self.defaults and value == self.defaults[key]:
                continue
            if value is None or value is False:
                continue
            out.append(key)
        return sorted(out)

    def decoder_config(self, d: dict[str, Any], *, name: str = "", checkpoint_id: str = ""):
        keys = self.unhandled(d)
        if keys:
            shown = ", ".join(f"{k}={d[k]!r}" for k in keys)
            raise UnsupportedArchitectureError(
                f"config key(s) {shown} not supported by the {self.name!r} family port "
                "(neither handled nor known to be harmless); refusing rather than computing "
                "other hidden states than Hugging Face"
            )
        return DecoderConfig(
            family=self.name, name=name, checkpoint_id=checkpoint_id, **self.config(d)
        )


def register(family: Family) -> Family:
    """Adds `family` to the registry (`config.FAMILIES`); a later family of
    the same name replaces it."""
    FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    FAMILIES.pop(name, None)


# ---------------------------------------------------------------- config.json


def get(d: Mapping[str, Any], *keys, default=None):
    """The first of `keys` present in `d` with a non-None value."""
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return default


def refuse(family: str, key: str, value, why: str = "") -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"config key {key}={value!r} is not supported by the {family!r} family port"
        + (f" ({why})" if why else "")
    )


ROPE_KEYS = frozenset({"rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor"})


def rope(d: Mapping[str, Any], family: str, params=None):
    """(theta, RopeScaling or None, partial-rotary factor) from either the
    transformers 5 `rope_parameters` dict (or `params`, one entry of it) or
    the older top-level keys."""
    if params is None:
        params = d.get("rope_parameters") or {}
        if isinstance(params, Mapping) and "rope_theta" not in params and params:
            first = next(iter(params.values()))
            if isinstance(first, Mapping):
                raise refuse(family, "rope_parameters", dict(params), "per-layer-type RoPE")
    legacy = d.get("rope_scaling") or {}
    merged = {**legacy, **params}
    theta = float(
        get(merged, "rope_theta", default=get(d, "rope_theta", "rotary_emb_base", default=1e4))
    )
    partial = float(
        get(
            merged,
            "partial_rotary_factor",
            default=get(d, "partial_rotary_factor", "rotary_pct", default=1.0),
        )
    )
    rope_type = get(merged, "rope_type", "type", default="default")
    if rope_type not in ROPE_TYPES:
        key = "rope_parameters" if d.get("rope_parameters") else "rope_scaling"
        raise UnsupportedArchitectureError(
            f"config key {key} has rope_type={rope_type!r}, which the {family!r} family port "
            f"does not implement; supported: {', '.join(ROPE_TYPES)}"
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


def activation(d: Mapping[str, Any], family: str, *keys: str, default: str) -> str:
    """The activation named by the first present of `keys`, refused with its
    key and value when the decoder has no such activation."""
    for key in keys:
        if d.get(key) is not None:
            if d[key] not in ACTIVATIONS:
                raise refuse(family, key, d[key], f"supported: {', '.join(ACTIVATIONS)}")
            return str(d[key])
    return default


def layer_types(d: Mapping[str, Any], family: str, num_layers: int):
    """`layer_types` ('full_attention' / 'sliding_attention' per layer) ->
    per-layer sliding flags, or None when absent."""
    types = d.get("layer_types")
    if types is None:
        return None
    known = {"full_attention", "sliding_attention"}
    if len(types) != num_layers or not set(types) <= known:
        raise refuse(family, "layer_types", list(types), f"expected {num_layers} of {known}")
    return tuple(t == "sliding_attention" for t in types)


LLAMA_LIKE_KEYS = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "hidden_act",
        "max_position_embeddings",
        "rms_norm_eps",
        "tie_word_embeddings",
        "pretraining_tp",  # a tensor-parallel re-association of the same matmuls
    }
    | ROPE_KEYS
)


def llama_like(d: Mapping[str, Any], family: str, *, act_keys=("hidden_act",)) -> dict:
    """The DecoderConfig fields of a Llama-style config.json (RMSNorm, gated
    MLP, RoPE, separate q/k/v)."""
    heads = int(d["num_attention_heads"])
    hidden = int(d["hidden_size"])
    head_dim = int(get(d, "head_dim", default=hidden // heads))
    theta, scaling, partial = rope(d, family)
    return dict(
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(get(d, "num_key_value_heads", default=heads)),
        head_dim=head_dim,
        intermediate_size=int(d["intermediate_size"]),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        activation=activation(d, family, *act_keys, default="silu"),
        norm="rms",
        norm_eps=float(get(d, "rms_norm_eps", default=1e-6)),
        mlp="gated",
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_dim=int(head_dim * partial),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
    )


# ----------------------------------------------------------- parameter layout


def spec(path: str, source: str, transform: Layout = SAME, stacked: bool = True) -> ParamSpec:
    return ParamSpec(tuple(path.split(".")), source, transform, stacked)


def llama_like_params(
    cfg: DecoderConfig, *, prefix: str = "model.", norms: Mapping[str, str] | None = None
) -> list[ParamSpec]:
    """HF Llama-style names (`model.layers.{i}.self_attn.q_proj`, ...), with
    the optional biases, QK-norms and sublayer norms `cfg` asks for.

    `norms` maps our norm parameter names to HF module names (default: the
    Llama pair input_layernorm / post_attention_layernorm)."""
    H, KV, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    D, F = cfg.hidden_size, cfg.intermediate_size
    p = prefix + "layers.{i}."
    norms = dict(norms or {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"})
    specs = [
        spec("embed", prefix + "embed_tokens.weight", stacked=False),
        spec("blocks.wq", p + "self_attn.q_proj.weight", in_out(H, hd)),
        spec("blocks.wk", p + "self_attn.k_proj.weight", in_out(KV, hd)),
        spec("blocks.wv", p + "self_attn.v_proj.weight", in_out(KV, hd)),
        spec("blocks.wo", p + "self_attn.o_proj.weight", heads_to_embed(H, hd)),
        spec("blocks.w_gate", p + "mlp.gate_proj.weight", in_out(F)),
        spec("blocks.w_up", p + "mlp.up_proj.weight", in_out(F)),
        spec("blocks.w_down", p + "mlp.down_proj.weight", in_out(D)),
    ]
    if cfg.final_norm:
        specs.append(spec("final_norm_scale", prefix + "norm.weight", stacked=False))
    for ours, theirs in norms.items():
        specs.append(spec(f"blocks.{ours}_scale", p + theirs + ".weight"))
    if cfg.qk_norm == "head":
        specs += [
            spec("blocks.q_norm_scale", p + "self_attn.q_norm.weight"),
            spec("blocks.k_norm_scale", p + "self_attn.k_norm.weight"),
        ]
    elif cfg.qk_norm == "projection":
        specs += [
            spec("blocks.q_norm_scale", p + "self_attn.q_norm.weight", reshape(H, hd)),
            spec("blocks.k_norm_scale", p + "self_attn.k_norm.weight", reshape(KV, hd)),
        ]
    if cfg.qkv_bias:
        specs += [
            spec("blocks.bq", p + "self_attn.q_proj.bias", reshape(H, hd)),
            spec("blocks.bk", p + "self_attn.k_proj.bias", reshape(KV, hd)),
            spec("blocks.bv", p + "self_attn.v_proj.bias", reshape(KV, hd)),
        ]
    if cfg.out_bias:
        specs.append(spec("blocks.bo", p + "self_attn.o_proj.bias"))
    if cfg.mlp_bias:
        specs += [
            spec("blocks.b_gate", p + "mlp.gate_proj.bias"),
            spec("blocks.b_up", p + "mlp.up_proj.bias"),
            spec("blocks.b_down", p + "mlp.down_proj.bias"),
        ]
    if not cfg.tie_word_embeddings:
        specs.append(spec("lm_head", "lm_head.weight", stacked=False))
    return specs


__all__ = [
    "COMMON_IGNORED",
    "Family",
    "LLAMA_LIKE_KEYS",
    "ROPE_KEYS",
    "get",
    "layer_types",
    "llama_like",
    "llama_like_params",
    "refuse",
    "register",
    "rope",
    "spec",
    "unregister",
]
