r"""The paper's figures and a markdown report from result folders.

  python experiments/plot_geometry.py \
      --results=results/smollm2_structured,results/smollm2_shuffled \
      --output_dir=results/report
"""

from __future__ import annotations

from absl import app, flags

from geom_jax import cli

cli.quiet_startup()

from geom_jax import report  # noqa: E402

_RESULTS = flags.DEFINE_list("results", None, "Result folders (output_dir of token_geometry).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder for the PNGs and report.md.")
_SCALE = flags.DEFINE_integer("scale", 0, "GRIDE scale index j (n1 = 2**j) used for the ID.")
flags.mark_flags_as_required(["results", "output_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    path = report.make_report(_RESULTS.value, _OUTPUT_DIR.value, _SCALE.value)
    print(f"Report: {path}")


if __name__ == "__main__":
    cli.without_torch()
    app.run(main)
