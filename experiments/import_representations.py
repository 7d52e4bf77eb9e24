r"""Representations from anywhere: arrays held outside geom-jax as a run folder.

  python experiments/import_representations.py --input=hidden_states.pt \
      --keys=keys.txt --output_dir=results/hf_import
  python experiments/compare_representations.py \
      --runs=results/smollm2_windows,results/hf_import --output_dir=results/compare

``--input``: ``.npy`` ([N, D] or [L, N, D]), ``.npz`` / ``.safetensors`` (``--array=NAME``
picks one array; without it the only array, or each array one hidden state [N, D] in the
natural order of their names), a Zarr array folder (tensorstore), a saved Hugging Face
dataset folder with ``--column`` (needs ``datasets``), or a ``torch.save`` file (``.pt`` /
``.pth``: a tensor, a tuple or list of tensors such as ``outputs.hidden_states``, or a
dict of tensors). Per-token hidden states ([B, T, D] each) keep one token per row:
``--position=last``, or the last real token under ``--token_mask=MASK.npy`` [B, T].
``--keys`` (one per row, ``.txt`` or ``.npy``; default: the row's index) and ``--labels``
(one integer per row) name and label the rows; ``--layers`` keeps some hidden states.

Writes ``representations.zarr`` [N, L, D], ``tokens.npz``, ``results.npz``, ``RESULTS.md``
and ``metadata.json`` (the input's path, format, arrays, shape, dtype and SHA-256 under
``imported``); bad input stops with one line before anything is written. torch is imported
only to read a ``.pt`` / ``.pth`` input (any other input runs as the other tools do, torch
made unimportable by ``cli.without_torch``).
"""

from __future__ import annotations

import sys

from absl import app, flags

from geom_jax import cli

cli.quiet_startup()

from geom_jax.io import external_arrays  # noqa: E402
from geom_jax.run import flags as run_flags  # noqa: E402
from geom_jax.run import importer  # noqa: E402
from geom_jax.run.checks import UserError  # noqa: E402

_INPUT = flags.DEFINE_string(
    "input",
    None,
    "The representations: .npy, .npz, .safetensors, .pt/.pth, a Zarr array "
    "folder or a saved Hugging Face dataset folder.",
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "The run folder to write (new or empty).")
_LABELS = flags.DEFINE_string("labels", None, "One integer class id per row (.npy or .txt).")
_KEYS = flags.DEFINE_string(
    "keys", None, "One distinct key per row (.txt, one per line, or .npy); default: its index."
)
_LAYERS = flags.DEFINE_string(
    "layers", "all", "The input's hidden states to keep: 'all' or a comma list of indices."
)
_ARRAY = flags.DEFINE_string(
    "array", None, "The array of an .npz/.safetensors file (or key of a dict in a torch file)."
)
_COLUMN = flags.DEFINE_string("column", None, "The column of a saved Hugging Face dataset.")
_POSITION = flags.DEFINE_enum(
    "position",
    None,
    list(external_arrays.POSITIONS),
    "Per-token hidden states [B, T, D]: keep each row's last token.",
)
_TOKEN_MASK = flags.DEFINE_string(
    "token_mask",
    None,
    "Per-token hidden states [B, T, D]: an .npy attention mask [B, T]; each row keeps its "
    "last real token (the last nonzero position).",
)
_NAME = flags.DEFINE_string(
    "name", None, "What the representations are (e.g. the model), for reports."
)
flags.mark_flags_as_required(["input", "output_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not external_arrays.needs_torch(_INPUT.value):
        cli.without_torch()  # only a torch.save input is read with torch
    try:
        meta = importer.import_representations(
            _INPUT.value,
            _OUTPUT_DIR.value,
            labels=_LABELS.value,
            keys=_KEYS.value,
            layers=_LAYERS.value,
            array=_ARRAY.value,
            column=_COLUMN.value,
            position=_POSITION.value,
            token_mask=_TOKEN_MASK.value,
            name=_NAME.value,
        )
    except UserError as e:
        print(f"error: {run_flags.message(e)}", file=sys.stderr)
        sys.exit(2)
    print(
        f"Imported {meta['num_rows']} rows x {meta['num_hidden_states']} hidden states x "
        f"{meta['dim']} into {_OUTPUT_DIR.value}"
    )


if __name__ == "__main__":
    app.run(main)
