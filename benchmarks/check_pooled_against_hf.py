"""A pooled run's stored points against Hugging Face PyTorch (issue 22, acceptance 4).

Loads the embedded SmolLM2-135M GGUF with transformers (float32), runs
``output_hidden_states`` on rows of a finished pooled run (their ``input_ids`` from
tokens.npz, as run) and compares the hidden states at each row's last valid token with
the run's ``representations.zarr``.

  python benchmarks/check_pooled_against_hf.py --run=DIR [--rows=256] [--batch=32]

Prints the largest relative deviation per hidden state (max |a - b| / max |b| over the
rows checked) and exits 1 above --limit (default 1e-4).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import transformers

from geom_jax.io.representation_store import RepresentationStore
from geom_jax.models.loading.embedded import GGUF_NAME, smollm2_gguf_path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--limit", type=float, default=1e-4)
    args = parser.parse_args()
    with np.load(os.path.join(args.run, "tokens.npz")) as z:
        ids, mask = z["input_ids"], z["attention_mask"]
    store = RepresentationStore.open_existing(os.path.join(args.run, "representations.zarr"))
    pick = np.unique(np.linspace(0, len(ids) - 1, args.rows).astype(int))
    folder = os.path.dirname(smollm2_gguf_path())
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=GGUF_NAME, dtype=torch.float32
    ).eval()
    ours = store.read(pick)  # [R, L+1, D]
    want = []
    with torch.no_grad():
        for i in range(0, len(pick), args.batch):
            rows = pick[i : i + args.batch]
            out = hf(
                torch.as_tensor(ids[rows], dtype=torch.long),
                attention_mask=torch.as_tensor(mask[rows], dtype=torch.long),
                output_hidden_states=True,
            )
            last = mask[rows].shape[1] - 1 - np.argmax(mask[rows][:, ::-1], axis=1)
            hs = np.stack([h.numpy() for h in out.hidden_states], 1)  # [b, L+1, T, D]
            want.append(hs[np.arange(len(rows)), :, last])
    want = np.concatenate(want)
    err = np.max(np.abs(ours - want), axis=(0, 2)) / np.max(np.abs(want), axis=(0, 2))
    print(f"{len(pick)} rows of {args.run}, {ours.shape[1]} hidden states")
    print("max relative deviation per hidden state:", np.array2string(err, precision=2))
    worst = float(err.max())
    verdict = "OK" if worst <= args.limit else "FAILED"
    print(f"largest: {worst:.2e} (limit {args.limit:.0e}): {verdict}")
    sys.exit(0 if worst <= args.limit else 1)


if __name__ == "__main__":
    main()
