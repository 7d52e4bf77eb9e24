"""Writes tests/fixtures/pydoc_windows_reference.npz: the windows and labels of
``clouds_reference.npz``'s ``smollm2_last_token`` case, as int32.

  python tests/reference/pydoc_windows_reference.py \
      tests/fixtures/clouds_reference.npz tests/fixtures/pydoc_windows_reference.npz

``input_ids [2000, 20]`` are the windows the reference's hidden states were taken at and
``labels [2000]`` their topics (tests/fixtures/README.md); tests/test_windows.py checks that
``data.select_windows`` cuts the same windows from the pydoc topics, row for row.
"""

import sys

import numpy as np

CASE = "smollm2_last_token"


def windows(clouds_reference: str) -> dict[str, np.ndarray]:
    with np.load(clouds_reference) as z:
        return {
            "input_ids": z[f"{CASE}/input_ids"].astype(np.int32),
            "labels": z[f"{CASE}/labels"].astype(np.int32),
        }


if __name__ == "__main__":
    np.savez(sys.argv[2], **windows(sys.argv[1]))
