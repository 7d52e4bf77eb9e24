r"""Representational similarity of two pooled runs, every hidden state against every one.

  python experiments/compare_representations.py \
      --runs=results/smollm2/pooled,results/smollm2_random/pooled --output_dir=results/compare

``--runs=DIR`` alone compares a run with itself (the diagonal is 1 for mutual k-NN and
CKA). Writes ``similarity.npz`` (one [levels, La, Lb] matrix per measure, documented in
``RESULTS.md``), a heat map per measure and ``report.md`` (per hidden state of A the
best-matching one of B). Runs whose rows do not correspond are refused, naming the
first mismatch. An imported run (``import_representations.py``) is matched by key: A's
structured rows, in A's order, with B's rows of the same key.
"""

from __future__ import annotations

import sys

from absl import app, flags

from geom_jax import cli

cli.quiet_startup()

from geom_jax.run import compare  # noqa: E402
from geom_jax.run import flags as run_flags  # noqa: E402

_RUNS = flags.DEFINE_list(
    "runs",
    None,
    "One or two pooled run folders (output_dir of runs, or of import_representations.py).",
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder for similarity.npz and report.")
_K = flags.DEFINE_integer(
    compare.SIMILARITY_K.name, compare.SIMILARITY_K.default, compare.SIMILARITY_K.doc
)
_MEASURES = flags.DEFINE_list(
    "measures", list(compare.MEASURES), f"Measures, of {', '.join(compare.MEASURES)}."
)
flags.mark_flags_as_required(["runs", "output_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runs = _RUNS.value
    if len(runs) not in (1, 2):
        print("error: --runs takes one or two folders", file=sys.stderr)
        sys.exit(2)
    try:
        compare.compare(
            runs[0], runs[-1], _OUTPUT_DIR.value, k=_K.value, measures=tuple(_MEASURES.value)
        )
    except compare.UserError as e:
        print(f"error: {run_flags.message(e)}", file=sys.stderr)
        sys.exit(2)
    print(f"Report: {_OUTPUT_DIR.value}/report.md")


if __name__ == "__main__":
    cli.without_torch()
    app.run(main)
