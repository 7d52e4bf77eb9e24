"""The command line: python -m benchmarks.device_check --output_dir=DIR [--quick]."""

from __future__ import annotations

import os
import sys

from absl import app, flags

from benchmarks.device_check.report import markdown
from benchmarks.device_check.runner import exit_status, run
from benchmarks.device_check.settings import COMPUTE_STAGES, REPORT_JSON, REPORT_MD

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("output_dir", None, "Folder for device_report.json and device_report.md.")
    flags.DEFINE_bool("quick", False, "Small shapes (a minute or two on any CPU-only machine).")
    flags.DEFINE_float("budget_s", 420.0, "Seconds of compute for all stages together.")
    flags.DEFINE_float(
        "peak_tflops", None, "Peak TFLOP/s of one device for MFU (default: from its device kind)."
    )
    flags.DEFINE_integer("max_batch", 256, "Largest batch the batch searches try.")
    flags.DEFINE_list(
        "stages",
        list(COMPUTE_STAGES),
        "Stages to run (the projection always follows), e.g. a rerun of one after a fix.",
    )
    flags.DEFINE_integer("seed", 0, "Seed of the token ids, weights and synthetic hidden states.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.budget_s < 0:
        raise app.UsageError(f"--budget_s must be >= 0, got {FLAGS.budget_s}")
    if FLAGS.max_batch < 1:
        raise app.UsageError(f"--max_batch must be >= 1, got {FLAGS.max_batch}")
    unknown = [name for name in FLAGS.stages if name not in COMPUTE_STAGES]
    if unknown:
        raise app.UsageError(
            f"--stages: unknown {', '.join(unknown)}; choose from {', '.join(COMPUTE_STAGES)}"
        )
    report = run(
        FLAGS.output_dir,
        quick=FLAGS.quick,
        budget_s=FLAGS.budget_s,
        peak_tflops=FLAGS.peak_tflops,
        max_batch=FLAGS.max_batch,
        seed=FLAGS.seed,
        stages=[name for name in COMPUTE_STAGES if name in FLAGS.stages],
    )
    print(markdown(report), flush=True)
    print(f"wrote {os.path.join(FLAGS.output_dir, REPORT_JSON)} and {REPORT_MD}", flush=True)
    sys.exit(exit_status(report))


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("output_dir")
    app.run(main)
