r"""Representational similarity of two pooled runs, every hidden state against every one.

  python experiments/compare_representations.py \
      --runs=results/smollm2/pooled,results/smollm2_random/pooled --output_dir=results/compare

``--runs=DIR`` alone compares a run with itself (the diagonal is 1 for mutual k-NN and
CKA). Writes ``similarity.npz`` (one [levels, La, Lb] matrix per measure, documented in
``RESULTS.md``), a heat map per measure and ``report.md`` (per hidden state of A the
best-matching one of B). ``--null_permutations=P`` adds a permutation null of every
measure: per pair the null mean and spread, the calibrated score and a p-value, and the
p-value of each best match and of the largest score over all pairs. Runs whose rows do
not correspond are refused, naming the first mismatch. An imported run
(``import_representations.py``) is matched by key: A's structured rows, in A's order, with
B's rows of the same key. The measures' option flags come from their declarations; left
unset, each measure keeps its own default.
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
_MEASURES = flags.DEFINE_list(
    "measures", list(compare.MEASURES), f"Measures, of {', '.join(compare.known_measures())}."
)
_NULL = flags.DEFINE_integer(
    "null_permutations", 0, "Permutations of B's rows for a null (0: none; at least 20)."
)
_NULL_SEED = flags.DEFINE_integer("null_seed", 0, "Seed of the permutations.")
_NULL_ALPHA = flags.DEFINE_float("null_alpha", 0.05, "Level of the calibration's critical score.")
_CLAMP = flags.DEFINE_float(
    "clamp", None, "Clamp each hidden state at this quantile first (platonic-rep: 0.95)."
)
_DEFINE = {
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_boolean,
    str: flags.DEFINE_string,
}
_OPTIONS = {
    name: _DEFINE[option.type](name, None, f"{option.doc} (unset: each measure's default)")
    for name, option in compare.measure_options().items()
}
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
            runs[0],
            runs[-1],
            _OUTPUT_DIR.value,
            measures=tuple(_MEASURES.value),
            null_permutations=_NULL.value,
            null_seed=_NULL_SEED.value,
            null_alpha=_NULL_ALPHA.value,
            clamp=_CLAMP.value,
            **{name: f.value for name, f in _OPTIONS.items()},
        )
    except compare.UserError as e:
        print(f"error: {run_flags.message(e)}", file=sys.stderr)
        sys.exit(2)
    print(f"Report: {_OUTPUT_DIR.value}/report.md")


if __name__ == "__main__":
    cli.without_torch()
    app.run(main)
