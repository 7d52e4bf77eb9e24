r"""Trains a tuned lens (Belrose et al. 2023, arXiv 2303.08112) with optax.

One affine translator per hidden state l = 0 .. L-1 (embedding output first),
initialised to the identity (the logit lens), trained to minimise
KL(p_final || softmax(W_U norm_final(h_l W_l + b_l))) on tokens of prompts
from the same sources as token_geometry.py; the last --num_heldout prompts
are held out and the held-out KL per layer is printed for the logit lens
and the trained lens. The lens is saved with orbax next to lens.json naming
the model, for ``token_geometry.py --lens=tuned:OUTPUT_DIR``.

  python experiments/train_tuned_lens.py --output_dir=lenses/smollm2
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "Model alias, Hub id, folder or .gguf.")
_DATASET = flags.DEFINE_string("dataset", "pydoc", "Prompt source (as token_geometry.py).")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "Field holding the text.")
_SPLIT = flags.DEFINE_string("split", "train", "Dataset split.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 128, "Tokens per prompt.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 40, "Prompts used, held-out ones included.")
_NUM_HELDOUT = flags.DEFINE_integer("num_heldout", 8, "Prompts held out for the evaluation.")
_STEPS = flags.DEFINE_integer("steps", 200, "Optimiser steps.")
_TOKENS_PER_STEP = flags.DEFINE_integer("tokens_per_step", 16, "Tokens sampled per step.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the token sampling.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 25, "Steps between progress lines.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder for translators/ and lens.json.")
flags.mark_flag_as_required("output_dir")


class UserError(ValueError):
    pass


def _check_flags():
    for name, value, low in [
        ("max_tokens", _MAX_TOKENS.value, 2),
        ("num_heldout", _NUM_HELDOUT.value, 1),
        ("steps", _STEPS.value, 1),
        ("tokens_per_step", _TOKENS_PER_STEP.value, 1),
        ("log_every", _LOG_EVERY.value, 1),
    ]:
        if value < low:
            raise UserError(f"--{name} must be at least {low}, got {value}")
    if _NUM_PROMPTS.value <= _NUM_HELDOUT.value:
        raise UserError(
            f"--num_prompts={_NUM_PROMPTS.value} must exceed --num_heldout={_NUM_HELDOUT.value}"
        )
    if _LEARNING_RATE.value <= 0:
        raise UserError(f"--learning_rate must be positive, got {_LEARNING_RATE.value}")
    from geom_jax.lens import tuned  # noqa: PLC0415

    if os.path.exists(os.path.join(_OUTPUT_DIR.value, tuned.LENS_FILE)):
        raise UserError(f"--output_dir={_OUTPUT_DIR.value!r} already holds a lens")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from geom_jax import data, lens, models  # noqa: PLC0415
    from geom_jax.lens import tuned  # noqa: PLC0415

    logging.set_verbosity(logging.WARNING)  # orbax's progress lines
    log = lambda msg: print(msg, flush=True)
    try:
        _check_flags()
        models.resolve(_MODEL.value)
        tokenizer = models.load_tokenizer(_MODEL.value)
        source = data.open_source(_DATASET.value, text_field=_TEXT_FIELD.value, split=_SPLIT.value)
        sel = data.select_prompts(
            source,
            [tokenizer],
            max_tokens=_MAX_TOKENS.value,
            num_prompts=_NUM_PROMPTS.value,
            dataset_name=_DATASET.value,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    t0 = time.time()
    model, _ = models.load(_MODEL.value, tokenizer=False)
    if _TOKENS_PER_STEP.value > (len(sel.token_ids) - _NUM_HELDOUT.value) * _MAX_TOKENS.value:
        print("error: --tokens_per_step exceeds the training tokens", file=sys.stderr)
        sys.exit(2)
    ids = sel.token_ids
    split = len(ids) - _NUM_HELDOUT.value
    train_hidden = tuned.hidden_tokens(model, ids[:split])
    held_hidden = tuned.hidden_tokens(model, ids[split:])
    log(
        f"{model.config.name or _MODEL.value}: {split} training and {len(ids) - split} held-out "
        f"prompts of {_MAX_TOKENS.value} tokens ({time.time() - t0:.0f} s for the forwards)"
    )
    params, history = tuned.train(
        model,
        train_hidden,
        steps=_STEPS.value,
        tokens_per_step=_TOKENS_PER_STEP.value,
        learning_rate=_LEARNING_RATE.value,
        seed=_SEED.value,
        log_every=_LOG_EVERY.value,
        log=log,
    )
    readout = lens.readout(model)
    before = tuned.mean_kl(held_hidden, readout, None)
    after = tuned.mean_kl(held_hidden, readout, params.translators)
    log("held-out KL(final || lens) per layer, nats: logit lens -> tuned lens")
    for layer, (a, b) in enumerate(zip(before, after)):
        log(f"  layer {layer:2d}: {a:.4f} -> {b:.4f} ({'lower' if b < a else 'NOT lower'})")
    tuned.save(
        _OUTPUT_DIR.value,
        params,
        model,
        dataset=_DATASET.value,
        max_tokens=_MAX_TOKENS.value,
        num_prompts=len(ids),
        num_heldout=len(ids) - split,
        steps=_STEPS.value,
        tokens_per_step=_TOKENS_PER_STEP.value,
        learning_rate=_LEARNING_RATE.value,
        seed=_SEED.value,
        final_train_kl=history[-1][1],
        heldout_kl_logit_lens=[float(v) for v in before],
        heldout_kl_tuned_lens=[float(v) for v in after],
        wall_time_s=round(time.time() - t0, 1),
    )
    log(f"Saved the lens to {os.path.abspath(_OUTPUT_DIR.value)}")


if __name__ == "__main__":
    from geom_jax import cli

    cli.without_torch()
    app.run(main)
