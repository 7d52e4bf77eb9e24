"""Tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from
Transformers with the Tuned Lens", arXiv 2303.08112): one affine translator
T_l(h) = h W_l + b_l per hidden state l = 0 .. L-1, trained so that the
read-out of T_l(h_l) predicts what the model finally predicts, i.e.
minimising KL(p_final || softmax(W_U norm_final(T_l(h_l)))) with
W_l = I, b_l = 0 at the start (the logit lens).

A trained lens is a folder: ``translators/`` (orbax, the weight [L, D, D] and
bias [L, D] arrays) and ``lens.json`` (the model it belongs to, shapes and
how it was trained). :func:`check_model` refuses a lens of another model.
"""

from __future__ import annotations

import hashlib
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct

from geom_jax.io import files
from geom_jax.lens import uncertainty
from geom_jax.lens.unembedding import readout as model_readout

LENS_FILE = "lens.json"
TRANSLATORS_DIR = "translators"
FORMAT = "geom_jax.tuned_lens/1"


@struct.dataclass
class TunedLens:
    """weight [L, D, D] and bias [L, D]: T_l(h) = h @ weight[l] + bias[l]."""

    weight: jax.Array
    bias: jax.Array

    @property
    def translators(self):
        return (self.weight, self.bias)


def identity(num_layers: int, hidden_size: int) -> TunedLens:
    """The logit lens as a tuned lens: W_l = I, b_l = 0 for l = 0 .. L-1."""
    eye = jnp.broadcast_to(
        jnp.eye(hidden_size, dtype=jnp.float32), (num_layers, hidden_size, hidden_size)
    )
    return TunedLens(weight=jnp.array(eye), bias=jnp.zeros((num_layers, hidden_size), jnp.float32))


def _log_probs(readout, normed):
    z = readout.logits(normed)
    return jax.nn.log_softmax(z, axis=-1)


def kl_to_final(hidden, readout, translators=None):
    """KL(p_final || p_lens,l) per layer and token, [L, N] (nats).

    Args:
      hidden: [L+1, N, D] hidden states of N tokens (last entry already
        through the final norm, as the decoder returns them).
      readout: the model's :class:`~geom_jax.lens.unembedding.Readout`.
      translators: None (logit lens) or (weight [L, D, D], bias [L, D]).

    Returns:
      [L, N] float32, layers one at a time (lax.map) so that only one
      [N, V] block of logits per layer is alive.
    """
    logp_final = _log_probs(readout, hidden[-1])
    p_final = jnp.exp(logp_final)

    def layer(args):
        h, tr = args
        x = uncertainty.translate(h[None], tr)[0]
        logp = _log_probs(readout, readout.normalize(x))
        return jnp.sum(p_final * (logp_final - logp), axis=-1)

    return jax.lax.map(layer, (hidden[:-1], translators))


def hidden_tokens(model, token_ids, batch: int = 4) -> np.ndarray:
    """Hidden states [L+1, P*T, D] (float32, host) of prompts token_ids [P, T]."""
    parts = []
    for i in range(0, len(token_ids), batch):
        out = model(jnp.asarray(token_ids[i : i + batch]))
        h = np.asarray(out.hidden_states, np.float32)
        parts.append(h.reshape(h.shape[0], -1, h.shape[-1]))
    return np.concatenate(parts, axis=1)


def mean_kl(hidden, readout, translators, chunk: int = 64) -> np.ndarray:
    """Mean over the N tokens of hidden [L+1, N, D] of :func:`kl_to_final`, [L]."""
    fn = jax.jit(lambda h, tr: kl_to_final(h, readout, tr))
    total = np.zeros(hidden.shape[0] - 1)
    for i in range(0, hidden.shape[1], chunk):
        total += np.asarray(fn(hidden[:, i : i + chunk], translators), np.float64).sum(-1)
    return total / hidden.shape[1]


def train(
    model,
    train_hidden,
    *,
    steps: int,
    tokens_per_step: int,
    learning_rate: float,
    seed: int = 0,
    log_every: int = 25,
    log=None,
):
    """Trains the translators with Adam (optax) from the identity.

    Args:
      model: the Decoder whose read-out the lens uses.
      train_hidden: [L+1, N, D] hidden states of the training tokens.
      steps, tokens_per_step, learning_rate, seed: each step draws
        tokens_per_step of the N tokens (without replacement) and takes one
        Adam step on the sum over layers of their mean KL to the final layer.
      log_every, log: a progress line through ``log(str)`` every log_every steps.

    Returns:
      (TunedLens, [(step, summed KL of that step's tokens)]).
    """
    if not 0 < tokens_per_step <= train_hidden.shape[1]:
        raise ValueError(
            f"tokens_per_step={tokens_per_step} must be in 1..{train_hidden.shape[1]} "
            "(the number of training tokens)"
        )
    ro = model_readout(model)
    params = identity(train_hidden.shape[0] - 1, train_hidden.shape[-1])
    opt = optax.adam(learning_rate)
    opt_state = opt.init(params)

    def loss_fn(p, h):
        return jnp.sum(jnp.mean(kl_to_final(h, ro, p.translators), axis=-1))

    @jax.jit
    def step(p, s, h):
        loss, grads = jax.value_and_grad(loss_fn)(p, h)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    rng = np.random.default_rng(seed)
    history, t0 = [], time.time()
    for i in range(1, steps + 1):
        pick = rng.choice(train_hidden.shape[1], tokens_per_step, replace=False)
        params, opt_state, loss = step(params, opt_state, jnp.asarray(train_hidden[:, pick]))
        history.append((i, float(loss)))
        if log is not None and (i % log_every == 0 or i == steps):
            recent = np.mean([v for _, v in history[-log_every:]])
            log(f"step {i}/{steps}: KL summed over layers {recent:.4f} ({time.time() - t0:.0f} s)")
    return params, history


FINGERPRINT_ROWS = 64


def readout_fingerprint(model) -> str:
    """sha256 of the final norm and FINGERPRINT_ROWS evenly spaced rows of W_U
    (float32 bytes): the same model wherever its files lie (a checkpoint id
    holds the path and, for folders, hashes only the tensor headers)."""

    ro = model_readout(model)
    rows = ro.vocab_rows.shape[0]
    pick = np.linspace(0, rows - 1, min(rows, FINGERPRINT_ROWS)).astype(np.int32)
    h = hashlib.sha256()
    for a in (ro.norm_scale, ro.norm_bias, jnp.take(ro.vocab_rows, jnp.asarray(pick), axis=0)):
        if a is not None:
            h.update(np.ascontiguousarray(np.asarray(a, np.float32)).tobytes())
    return h.hexdigest()


def model_description(model) -> dict:
    """What identifies the model a lens belongs to."""
    cfg = model.config
    return {
        "name": cfg.name,
        "checkpoint_id": cfg.checkpoint_id,
        "readout_sha256": readout_fingerprint(model),
        "family": cfg.family,
        "num_layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
    }


def check_model(meta: dict, model, *, lens_dir: str = "") -> None:
    """Raises ValueError unless the lens described by ``meta`` belongs to ``model``
    (same read-out weights and shapes)."""
    want = meta.get("model", {})
    have = model_description(model)
    keys = ("readout_sha256", "num_layers", "hidden_size", "vocab_size")
    if any(want.get(k) != have[k] for k in keys):
        raise ValueError(
            f"lens {lens_dir!r} was trained for model {want.get('name')!r} "
            f"(checkpoint {want.get('checkpoint_id')!r}, {want.get('num_layers')} layers, "
            f"D = {want.get('hidden_size')}), not for model {have['name']!r} "
            f"(checkpoint {have['checkpoint_id']!r}, {have['num_layers']} layers, "
            f"D = {have['hidden_size']})"
        )


def save(directory: str, lens: TunedLens, model, **training) -> str:
    """Writes ``translators/`` (orbax) and ``lens.json``; returns the folder."""

    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, TRANSLATORS_DIR)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(target, {"weight": lens.weight, "bias": lens.bias}, force=True)
    files.write_json(
        os.path.join(directory, LENS_FILE),
        {
            "format": FORMAT,
            "model": model_description(model),
            "shapes": {"weight": list(lens.weight.shape), "bias": list(lens.bias.shape)},
            "training": training,
        },
    )
    return directory


def read_meta(directory: str) -> dict:
    """The ``lens.json`` of a lens folder; ValueError naming the folder if absent or foreign."""
    path = os.path.join(directory, LENS_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{directory!r} is not a tuned lens: it has no {LENS_FILE}")
    meta = files.read_json(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load(directory: str) -> tuple[TunedLens, dict]:
    """(TunedLens, lens.json) of a folder written by :func:`save`."""

    directory = os.path.abspath(directory)
    meta = read_meta(directory)
    template = {
        k: jax.ShapeDtypeStruct(tuple(meta["shapes"][k]), np.float32) for k in ("weight", "bias")
    }
    with ocp.StandardCheckpointer() as ckpt:
        arrays = ckpt.restore(os.path.join(directory, TRANSLATORS_DIR), template)
    return TunedLens(weight=arrays["weight"], bias=arrays["bias"]), meta
