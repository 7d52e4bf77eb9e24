"""The tuned lens (issue 15, acceptance 3): trained with optax from the identity
on a tiny model it lowers the held-out KL to the final layer at every layer,
reloads from orbax to identical outputs, and a lens of another model is refused."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers.tiny_model import write_tiny_llama

from geom_jax import data, lens, models
from geom_jax.lens import tuned

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "train_tuned_lens.py")


def _hidden(model, tok, num_prompts=8, max_tokens=32):
    sel = data.select_prompts(
        data.open_source(data.PYDOC), [tok], max_tokens=max_tokens, num_prompts=num_prompts
    )
    return tuned.hidden_tokens(model, sel.token_ids)


def test_trained_lens_lowers_heldout_kl_and_reloads_identically(tiny, tmp_path):
    model, tok = models.load(tiny)
    hidden = _hidden(model, tok)
    train, held = hidden[:, : 6 * 32], hidden[:, 6 * 32 :]
    params, history = tuned.train(
        model, train, steps=20, tokens_per_step=16, learning_rate=1e-3, seed=0
    )
    assert len(history) == 20 and history[-1][1] < history[0][1]
    ro = lens.readout(model)
    before = tuned.mean_kl(held, ro, None)
    after = tuned.mean_kl(held, ro, params.translators)
    assert before.shape == (model.config.num_layers,)
    assert (after < before).all(), (before, after)
    np.testing.assert_allclose(
        tuned.mean_kl(held, ro, tuned.identity(*params.bias.shape).translators), before, rtol=1e-6
    )

    folder = tuned.save(str(tmp_path / "lens"), params, model, steps=40)
    loaded, meta = tuned.load(folder)
    np.testing.assert_array_equal(np.asarray(loaded.weight), np.asarray(params.weight))
    np.testing.assert_array_equal(np.asarray(loaded.bias), np.asarray(params.bias))
    assert meta["model"] == tuned.model_description(model) and meta["training"]["steps"] == 40
    tuned.check_model(meta, model)
    h = hidden[:, None, :16]
    np.testing.assert_array_equal(
        np.asarray(lens.lens_stats(h, ro, loaded.translators)),
        np.asarray(lens.lens_stats(h, ro, params.translators)),
    )


def test_lens_of_another_model_is_refused(tiny, tmp_path):
    model, _ = models.load(tiny)
    folder = tuned.save(str(tmp_path / "lens"), tuned.identity(3, 64), model)
    _, meta = tuned.load(folder)
    other, _ = models.load(write_tiny_llama(str(tmp_path / "other"), seed=1))
    with pytest.raises(
        ValueError, match=r"was trained for model 'tiny-llama' .* not for model 'other'"
    ):
        tuned.check_model(meta, other, lens_dir=folder)
    with pytest.raises(ValueError, match="has no lens.json"):
        tuned.read_meta(str(tmp_path))


@pytest.mark.slow  # two interpreter starts, ~40 s
def test_cli_prints_heldout_kl_per_layer(tiny, tmp_path):
    out = tmp_path / "cli_lens"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    args = [
        f"--model={tiny}",
        "--max_tokens=32",
        "--num_prompts=6",
        "--num_heldout=2",
        "--steps=10",
        "--tokens_per_step=16",
        "--log_every=5",
        f"--output_dir={out}",
    ]
    proc = subprocess.run([sys.executable, SCRIPT, *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("layer")]
    assert len(lines) == 3 and all(ln.endswith("(lower)") for ln in lines), proc.stdout
    assert "step 10/10" in proc.stdout
    assert tuned.read_meta(str(out))["model"]["num_layers"] == 3
    again = subprocess.run([sys.executable, SCRIPT, *args], env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "already holds a lens" in again.stderr
