"""What a model family declares, and the registry of families.

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
from typing import Any

from ..config import FAMILIES, DecoderConfig, UnsupportedArchitectureError
from ..loading.hf_layout import ParamSpec

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


__all__ = ["COMMON_IGNORED", "Family", "register", "unregister"]
