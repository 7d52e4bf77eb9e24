r"""One prepared accelerator check, in one command that fits a short device lease.

On whatever ``jax.devices()`` offers, in this order and within ``--budget_s``:

1. correctness: the fused step (random-weight SmolLM2-135M preset) on the
   accelerator against the same machine's CPU backend on the same token ids,
   and ``selection="xla"`` against ``"host"`` on the same hidden states;
2. forward: Llama-3-8B preset, random bfloat16 weights, T = 1024, the largest
   batch that fits (found by trying), tokens/s and model FLOPs utilisation;
3. metrics: ``layer_geometry`` at Llama-3-8B's shape (33 x 1024 x 4096) per prompt;
4. fused: the fused step's prompts/s for Llama-3-8B, then Mistral-7B and
   Pythia-6.9B while time is left;
5. projection: minutes for the paper's sweep (2,244 prompts x 3 models) on
   one such device, beside the paper's 40 + 25 minutes per model.

A stage whose estimated cost no longer fits the budget is skipped with a note;
``device_report.json`` and ``device_report.md`` are rewritten after every
stage, so a run cut short still leaves a report. Exit status 1 when a stage
failed or a correctness check that ran did not pass.

  python -m benchmarks.device_check --quick --output_dir=/tmp/device_check  # any CPU, 1-3 min
  python -m benchmarks.device_check --output_dir=$OUT                        # the accelerator
  python -m benchmarks.device_check --output_dir=$OUT --stages=correctness   # rerun one stage

docs/history.md (section 6, "Device check") has the exact command for a lent
device machine and what each stage measures. Modules: ``settings`` (stages, full and
--quick settings, tolerances), ``budget``, ``measure`` (comparisons, timing, batch
search, synthetic inputs), ``stages`` (DeviceCheck), ``report``, ``runner`` (run) and
``__main__`` (the flags).

Needs only jax, flax, numpy and absl (no GGUF, torch, datasets or download):
every model is a preset with random weights generated on the device.
"""

import os

# Before jax starts: let a GPU's allocator take 92% of the card (default 75%).
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")

from benchmarks.device_check.budget import Budget, log, run_stages  # noqa: E402
from benchmarks.device_check.measure import (  # noqa: E402
    compare,
    deviation,
    find_batch,
    predict_batch,
    synthetic_stack,
    time_runs,
    token_ids,
)
from benchmarks.device_check.report import markdown, write_report  # noqa: E402
from benchmarks.device_check.runner import exit_status, run  # noqa: E402
from benchmarks.device_check.settings import (  # noqa: E402
    COMPUTE_STAGES,
    DEFAULT_TOLERANCE,
    PAPER_MODELS,
    REPORT_JSON,
    REPORT_MD,
    STAGES,
    TOLERANCES,
    Settings,
    make_settings,
    model_config,
)
from benchmarks.device_check.stages import DeviceCheck  # noqa: E402

__all__ = [
    "COMPUTE_STAGES",
    "DEFAULT_TOLERANCE",
    "PAPER_MODELS",
    "REPORT_JSON",
    "REPORT_MD",
    "STAGES",
    "TOLERANCES",
    "Budget",
    "DeviceCheck",
    "Settings",
    "compare",
    "deviation",
    "exit_status",
    "find_batch",
    "log",
    "make_settings",
    "markdown",
    "model_config",
    "predict_batch",
    "run",
    "run_stages",
    "synthetic_stack",
    "time_runs",
    "token_ids",
    "write_report",
]
