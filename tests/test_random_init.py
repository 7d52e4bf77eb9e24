"""The untrained control (issue 23: --random_init): a checkpoint's architecture with
seeded random weights drawn as Hugging Face's _init_weights draws Llama's."""

import json
import math
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType

import geom_jax.models as gm


def _params(model) -> dict:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(map(str, k)): np.asarray(v[...]) for k, v in flat}


@pytest.fixture(scope="module")
def tiny_std(tiny, tmp_path_factory):
    """The tiny checkpoint with initializer_range 0.05 in its config.json."""
    path = str(tmp_path_factory.mktemp("std") / "tiny-std")
    shutil.copytree(tiny, path)
    with open(f"{path}/config.json") as fh:
        config = json.load(fh)
    config["initializer_range"] = 0.05
    with open(f"{path}/config.json", "w") as fh:
        json.dump(config, fh)
    return path


@pytest.fixture(scope="module")
def seed3(tiny):
    return gm.load_random(tiny, seed=3)


def test_seeded_deterministic_and_unlike_the_trained_weights(tiny, seed3):
    a, tok, info = seed3
    b, _, _ = gm.load_random(tiny, seed=3, tokenizer=False)
    c, _, _ = gm.load_random(tiny, seed=4, tokenizer=False)
    trained, _ = gm.load(tiny, tokenizer=False)
    pa, pb, pc, pt = map(_params, (a, b, c, trained))
    assert pa.keys() == pt.keys()
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name])
        assert pa[name].shape == pt[name].shape
        if "norm" not in name:
            assert not np.array_equal(pa[name], pc[name]), name
            assert not np.array_equal(pa[name], pt[name]), name
    assert tok is not None and len(tok) > 49000
    assert info.seed == 3 and info.initializer_range == 0.02
    assert info.initializer_range_from.startswith("transformers' default")
    assert a.config.checkpoint_id == f"random-init:seed=3:std=0.02:{info.architecture_of}"
    assert a.config.replace(checkpoint_id="") == trained.config.replace(checkpoint_id="")
    # Weights of std 0.02 give nearly uniform next-token predictions: the final norm's
    # output has rms 1, so the logits have std sqrt(D) 0.02 = 0.16 and the loss is
    # log V - var / 2 = log V - 0.013 (to about 0.01).
    ids = np.random.default_rng(0).integers(3, 1000, (2, 16)).astype(np.int32)
    loss = float(a(ids).loss)
    expected = math.log(a.config.vocab_size) - a.config.hidden_size * 0.02**2 / 2
    assert abs(loss - expected) < 0.01, (loss, expected)
    assert float(trained(ids).loss) != pytest.approx(loss, abs=0.1)


def test_statistics_are_hf_llama_init(tiny_std):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, _, info = gm.load_random(tiny_std, seed=0, tokenizer=False)
    assert info.initializer_range == 0.05
    assert info.initializer_range_from == f"config.json of {tiny_std}"
    assert "N(0, 0.05)" in info.metadata()["distribution"]
    params = _params(model)
    for name, value in params.items():
        x = value.astype(np.float64).ravel()
        if "norm" in name:
            np.testing.assert_array_equal(x, 1.0)
            continue
        n = x.size
        # Sampling errors of a normal's moments: std 1/sqrt(2n), mean 1/sqrt(n),
        # excess kurtosis sqrt(24/n); 5 of them (a truncated normal at 2 sigma has
        # excess kurtosis -0.9, a uniform -1.2).
        assert abs(x.std() / 0.05 - 1) < 5 / math.sqrt(2 * n), (name, x.std())
        assert abs(x.mean()) < 5 * 0.05 / math.sqrt(n), name
        kurtosis = np.mean((x - x.mean()) ** 4) / x.var() ** 2 - 3
        assert abs(kurtosis) < 5 * math.sqrt(24 / n), (name, kurtosis)
    # The same statistics as Hugging Face's own initialisation of that config.
    config = transformers.AutoConfig.from_pretrained(tiny_std)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    hf_params = dict(hf.named_parameters())
    for hf_name, ours in (
        ("model.embed_tokens.weight", "embed"),
        ("model.layers.0.self_attn.q_proj.weight", "blocks/wq"),
        ("model.layers.1.mlp.down_proj.weight", "blocks/w_down"),
        ("lm_head.weight", "lm_head"),
    ):
        theirs = hf_params[hf_name].detach().double().numpy()
        n = theirs.size
        assert abs(theirs.std() / params[ours].std() - 1) < 10 / math.sqrt(2 * n), hf_name
    np.testing.assert_array_equal(hf_params["model.norm.weight"].detach().numpy(), 1.0)


def test_initializer_range_sources_and_errors(tiny):
    std, where = gm.initializer_range("smollm2-135m")
    assert std == pytest.approx(1 / 24, rel=1e-12)
    assert where == "the embedded preset smollm2-135m (the published config.json)"
    _, _, info = gm.load_random(tiny, seed=0, tokenizer=False, init_std=0.1)
    assert (info.initializer_range, info.initializer_range_from) == (0.1, "passed")
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        gm.load_random(tiny, seed=-1)
    with pytest.raises(ValueError, match="init_std must be positive, got 0"):
        gm.load_random(tiny, seed=0, init_std=0)


def test_mesh_draws_the_same_weights_in_their_shardings(tiny, seed3):
    mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    sharded, _, _ = gm.load_random(tiny, seed=3, tokenizer=False, mesh=mesh)
    ps, pp = _params(sharded), _params(seed3[0])
    for name in pp:
        np.testing.assert_array_equal(ps[name], pp[name])
    wq = nnx.state(sharded, nnx.Param)["blocks"]["wq"][...]
    assert isinstance(wq.sharding, jax.sharding.NamedSharding) and wq.sharding.mesh.shape == {
        "data": 1,
        "model": 1,
    }
