r"""The paper's experiments: token geometry of every prompt at every layer.

Runs a model over prompts (structured, or each also block-shuffled at
s = 0..max_shuffle as in the paper's Algorithm 1) and writes, per prompt,
GRIDE and TwoNN intrinsic dimension, neighbourhood overlap between
consecutive layers, cosine-similarity statistics, the loss and per-token NLL.

  python experiments/token_geometry.py --model=smollm2-135m --dataset=pydoc \
      --method=shuffled --max_tokens=1024 --num_prompts=8 \
      --output_dir=results/smollm2_shuffled

Results: ``OUTPUT_DIR/results.npz`` (``np.load``), ``metadata.json`` and
``RESULTS.md`` describing each array. ``--resume`` continues a killed run.
"""

from __future__ import annotations

import sys

from absl import app, flags

from geom_jax import cli

cli.quiet_startup()

from geom_jax.run import distributed, runner  # noqa: E402
from geom_jax.run import flags as run_flags  # noqa: E402

FLAGS = flags.FLAGS
run_flags.define_flags()
flags.adopt_module_key_flags(run_flags)  # --help lists these (--helpfull: also absl's)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        runner.run(run_flags.spec_from_flags(FLAGS))
    except (runner.UserError, distributed.DistributedError) as e:
        print(f"error: {run_flags.message(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli.without_torch()
    app.run(main)
