"""The family registry: strict config keys (acceptance 3), a family added
from outside the package (acceptance 4), typed DecoderConfig fields."""

import importlib
import json
import sys
import textwrap

import numpy as np
import pytest
from flax import nnx

import geom_jax.models as gm
from geom_jax.models import families

LLAMA = dict(
    architectures=["LlamaForCausalLM"],
    vocab_size=50,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)


def test_unknown_key_with_a_non_default_value_is_refused_with_its_name():
    gm.from_hf_config(dict(LLAMA, sliding_window=None, some_new_switch=False))
    with pytest.raises(gm.UnsupportedArchitectureError) as e:
        gm.from_hf_config(dict(LLAMA, sliding_window=4096))
    assert "sliding_window=4096" in str(e.value) and "'llama'" in str(e.value)
    with pytest.raises(gm.UnsupportedArchitectureError, match=r"quantization_config"):
        gm.from_hf_config(dict(LLAMA, quantization_config={"quant_method": "gptq"}))
    with pytest.raises(gm.UnsupportedArchitectureError, match=r"some_new_switch=3"):
        gm.from_hf_config(dict(LLAMA, some_new_switch=3))


def test_known_but_unsupported_values_are_refused_with_key_and_value():
    phi3 = dict(
        LLAMA,
        architectures=["Phi3ForCausalLM"],
        rope_scaling={"type": "longrope", "long_factor": [1.0], "short_factor": [1.0]},
    )
    with pytest.raises(gm.UnsupportedArchitectureError) as e:
        gm.from_hf_config(phi3)
    assert "rope_scaling" in str(e.value) and "'longrope'" in str(e.value)
    qwen2 = dict(LLAMA, architectures=["Qwen2ForCausalLM"], use_sliding_window=True)
    with pytest.raises(gm.UnsupportedArchitectureError, match=r"use_sliding_window=True"):
        gm.from_hf_config(qwen2)
    opt = dict(
        architectures=["OPTForCausalLM"],
        vocab_size=50,
        hidden_size=16,
        ffn_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=8,
    )
    with pytest.raises(gm.UnsupportedArchitectureError, match=r"word_embed_proj_dim=8"):
        gm.from_hf_config(opt)
    with pytest.raises(gm.UnsupportedArchitectureError, match=r"hidden_act='swish_v9'"):
        gm.from_hf_config(dict(LLAMA, hidden_act="swish_v9"))


def test_refused_by_load_before_any_weight(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(LLAMA, sliding_window=16)))
    with pytest.raises(gm.UnsupportedArchitectureError, match="sliding_window=16"):
        gm.load(str(tmp_path))  # no safetensors file: the config is refused first


@pytest.mark.parametrize(
    "cls,arch",
    [
        ("LlamaConfig", "LlamaForCausalLM"),
        ("MistralConfig", "MistralForCausalLM"),
        ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
        ("Qwen2Config", "Qwen2ForCausalLM"),
        ("Qwen3Config", "Qwen3ForCausalLM"),
        ("Gemma2Config", "Gemma2ForCausalLM"),
        ("Gemma3TextConfig", "Gemma3ForCausalLM"),
        ("Olmo2Config", "Olmo2ForCausalLM"),
        ("Phi3Config", "Phi3ForCausalLM"),
        ("GPT2Config", "GPT2LMHeadModel"),
        ("OPTConfig", "OPTForCausalLM"),
    ],
)
def test_every_key_transformers_writes_is_handled(cls, arch):
    """A default transformers config (every key it has, not just the diff
    save_pretrained writes) passes the key check of its family."""
    transformers = pytest.importorskip("transformers")
    d = getattr(transformers, cls)().to_dict()
    d["architectures"] = [arch]
    cfg = gm.from_hf_config(d)
    assert gm.config.FAMILIES[cfg.family].model_type == d["model_type"]


def test_typed_fields_are_validated():
    base = dict(
        family="llama",
        vocab_size=10,
        hidden_size=8,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        head_dim=4,
        intermediate_size=8,
        max_position_embeddings=16,
    )
    gm.DecoderConfig(**base, norm="rms_one_plus", sublayer_norms="pre_post")
    with pytest.raises(gm.UnsupportedArchitectureError, match=r"norm='rmsnorm'.*rms_one_plus"):
        gm.DecoderConfig(**base, norm="rmsnorm")
    with pytest.raises(gm.UnsupportedArchitectureError, match=r"sublayer_norms='sandwich'"):
        gm.DecoderConfig(**base, sublayer_norms="sandwich")
    with pytest.raises(gm.UnsupportedArchitectureError, match=r"unknown family 'falcon'"):
        gm.DecoderConfig(**dict(base, family="falcon"))


TOY_FAMILY = textwrap.dedent('''
    """A toy family for the registry test: its own config keys and tensor names."""
    from geom_jax.models.families import family, llamalike
    from geom_jax.models.loading.layout import heads_to_embed, in_out

    def config(d):
        return dict(
            vocab_size=d["n_vocab"], hidden_size=d["width"], num_layers=d["depth"],
            num_heads=d["heads"], num_kv_heads=d["heads"], head_dim=d["width"] // d["heads"],
            intermediate_size=2 * d["width"], max_position_embeddings=d["context"],
            tie_word_embeddings=True,
        )

    def params(cfg):
        H, hd, D, F = cfg.num_heads, cfg.head_dim, cfg.hidden_size, cfg.intermediate_size
        S = llamalike.spec
        return [
            S("embed", "toy.emb", stacked=False),
            S("final_norm_scale", "toy.out_norm", stacked=False),
            S("blocks.attn_norm_scale", "toy.{i}.n1"),
            S("blocks.mlp_norm_scale", "toy.{i}.n2"),
            S("blocks.wq", "toy.{i}.q", in_out(H, hd)),
            S("blocks.wk", "toy.{i}.k", in_out(H, hd)),
            S("blocks.wv", "toy.{i}.v", in_out(H, hd)),
            S("blocks.wo", "toy.{i}.o", heads_to_embed(H, hd)),
            S("blocks.w_gate", "toy.{i}.gate", in_out(F)),
            S("blocks.w_up", "toy.{i}.up", in_out(F)),
            S("blocks.w_down", "toy.{i}.down", in_out(D)),
        ]

    FAMILY = family.register(family.Family(
        name="toy", architectures=("ToyForCausalLM",), model_types=("toy",),
        handled=frozenset({"n_vocab", "width", "depth", "heads", "context"}),
        config=config, params=params,
        presets={"toy-tiny": dict(architectures=["ToyForCausalLM"], n_vocab=40, width=16,
                                  depth=2, heads=4, context=32)},
    ))
''')


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    (tmp_path / "toy_family.py").write_text(TOY_FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_family")
    yield module
    families.unregister("toy")
    sys.modules.pop("toy_family", None)


def test_a_family_registered_from_outside_loads_its_checkpoint(toy_family, tmp_path):
    from safetensors.numpy import save_file

    assert "toy-tiny" in gm.presets.names()
    cfg = gm.presets.get("toy-tiny")
    assert cfg.family == "toy" and cfg.num_layers == 2
    ref = gm.init_random(cfg, seed=3)
    p = nnx.to_pure_dict(nnx.state(ref))
    b = {k: np.asarray(v) for k, v in p["blocks"].items()}
    t = {"toy.emb": np.asarray(p["embed"]), "toy.out_norm": 1 + 0.1 * b["wq"][0, 0, 0]}
    t["toy.out_norm"] = np.resize(t["toy.out_norm"], 16).astype(np.float32)
    for i in range(2):
        t |= {
            f"toy.{i}.n1": 1 + 0.1 * b["w_up"][i, 0, :16],
            f"toy.{i}.n2": 1 - 0.1 * b["w_up"][i, 1, :16],
            f"toy.{i}.q": b["wq"][i].reshape(16, -1).T,
            f"toy.{i}.k": b["wk"][i].reshape(16, -1).T,
            f"toy.{i}.v": b["wv"][i].reshape(16, -1).T,
            f"toy.{i}.o": b["wo"][i].reshape(-1, 16).T,
            f"toy.{i}.gate": b["w_gate"][i].T,
            f"toy.{i}.up": b["w_up"][i].T,
            f"toy.{i}.down": b["w_down"][i].T,
        }
    folder = tmp_path / "toy-ckpt"
    folder.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(toy_family.FAMILY.presets["toy-tiny"]))
    model, _ = gm.load(str(folder))
    assert model.config.family == "toy"
    # the same numbers placed by hand, bypassing the loader
    p["final_norm_scale"] = t["toy.out_norm"]
    p["blocks"]["attn_norm_scale"] = np.stack([t["toy.0.n1"], t["toy.1.n1"]])
    p["blocks"]["mlp_norm_scale"] = np.stack([t["toy.0.n2"], t["toy.1.n2"]])
    expected = gm.with_params(cfg, p)
    ids = np.arange(20, dtype=np.int32)[None] % 40
    np.testing.assert_allclose(
        np.asarray(model(ids).hidden_states), np.asarray(expected(ids).hidden_states), atol=1e-6
    )
    with pytest.raises(
        gm.UnsupportedArchitectureError, match=r"rotary=True not supported by the 'toy'"
    ):
        gm.from_hf_config(dict(toy_family.FAMILY.presets["toy-tiny"], rotary=True))
