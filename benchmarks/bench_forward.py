"""Throughput of the jitted JAX forward (all hidden states + token NLL)
against Hugging Face PyTorch `output_hidden_states=True` on the same model
and token ids, in the same run. The last line is the JAX/PyTorch ratio.

  python -m benchmarks.bench_forward --model=smollm2-135m --batch_size=1 --tokens=1024
  python -m benchmarks.bench_forward --model=llama-3-8b --random_weights \
      --dtype=bfloat16 --param_dtype=bfloat16 --tokens=1024 --torch=false
"""

from __future__ import annotations

import os
import statistics
import time

from absl import app, flags

from geom_jax import cli

cli.quiet_startup()

from benchmarks import benchmarking  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "alias, directory, .gguf, Hub id, or preset name")
flags.DEFINE_integer("batch_size", 1, "sequences per forward")
flags.DEFINE_integer("tokens", 1024, "tokens per sequence")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "activation dtype (both sides)")
flags.DEFINE_enum(
    "param_dtype", None, ["float32", "bfloat16"], "JAX parameter dtype (default: --dtype)"
)
flags.DEFINE_integer("repeats", 7, "timed forwards per side, interleaved (after one warm-up)")
flags.DEFINE_bool("random_weights", False, "random parameters of the model's full-size preset")
flags.DEFINE_bool("torch", True, "also time HF PyTorch (off for models too big for the host)")
flags.DEFINE_integer(
    "attn_block", None, "query block of the block-causal attention (default: library's)"
)
flags.DEFINE_float(
    "pause",
    1.0,
    "seconds of idle before each timed forward (lets the other "
    "runtime's worker threads stop spinning)",
)
flags.DEFINE_float("peak_tflops", None, "peak FLOP/s of one device in TFLOP/s, for MFU")
flags.DEFINE_integer("seed", 0, "seed of the token ids and random weights")


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import geom_jax.models as gm

    dtype = jnp.dtype(FLAGS.dtype)
    param_dtype = jnp.dtype(FLAGS.param_dtype or FLAGS.dtype)
    extra = {} if FLAGS.attn_block is None else {"attn_block": FLAGS.attn_block}
    t = time.perf_counter()
    if FLAGS.random_weights:
        model = gm.init_random(
            gm.presets.get(FLAGS.model),
            seed=FLAGS.seed,
            dtype=dtype,
            param_dtype=param_dtype,
            **extra,
        )
    else:
        model, _ = gm.load(FLAGS.model, dtype=dtype, param_dtype=param_dtype, **extra)
    jax.block_until_ready(nnx.state(model))
    cfg = model.config
    print(
        f"model {FLAGS.model}: {cfg.family}, {cfg.num_layers} layers, d={cfg.hidden_size}, "
        f"{cfg.num_params() / 1e6:.1f}M params, {'random' if FLAGS.random_weights else 'loaded'} "
        f"in {time.perf_counter() - t:.1f} s"
    )
    device = jax.devices()[0]
    print(
        f"jax {jax.__version__} on {device.device_kind} ({jax.device_count()} device(s)); "
        f"dtype={dtype.name} param_dtype={param_dtype.name}; "
        f"B={FLAGS.batch_size} T={FLAGS.tokens}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )

    rng = np.random.default_rng(FLAGS.seed)
    ids = rng.integers(0, cfg.vocab_size, (FLAGS.batch_size, FLAGS.tokens), dtype=np.int32)
    ids_dev = jnp.asarray(ids)
    graphdef, state = nnx.split(model)
    t = time.perf_counter()
    compiled = gm.forward.lower(graphdef, state, ids_dev).compile()
    print(f"JAX compile: {time.perf_counter() - t:.2f} s")
    run_jax = lambda: jax.block_until_ready(compiled(state, ids_dev))
    run_jax()
    ntok = FLAGS.batch_size * FLAGS.tokens
    peak = benchmarking.peak_flops(device, FLAGS.peak_tflops)
    flops = cfg.flops_per_token(FLAGS.tokens) * ntok

    run_torch = None
    if FLAGS.torch:
        import torch

        from benchmarks import torch_forward as tf

        t = time.perf_counter()
        tmodel = tf.model_for(
            FLAGS.model, random_weights=FLAGS.random_weights, dtype=FLAGS.dtype, seed=FLAGS.seed
        )
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"attn_implementation={tmodel.config._attn_implementation}; loaded in "
            f"{time.perf_counter() - t:.1f} s"
        )
        run_torch = lambda: tf.forward(tmodel, ids)
        run_torch()

    # Interleaved, so both sides see the same machine load; the pause keeps one
    # runtime's idle-spinning worker threads from slowing the other.
    times = {"JAX": [], "PyTorch": []}
    for _ in range(FLAGS.repeats):
        for side, fn in (("JAX", run_jax), ("PyTorch", run_torch)):
            if fn is not None:
                time.sleep(FLAGS.pause)
                t = time.perf_counter()
                fn()
                times[side].append(time.perf_counter() - t)
    tps, best = {}, {}
    for side, ts in times.items():
        if ts:
            med = statistics.median(ts)
            tps[side], best[side] = ntok / med, ntok / min(ts)
            print(
                f"{side} forward: median {med:.3f} s, min {min(ts):.3f} s, "
                f"{tps[side]:,.0f} tokens/s, "
                f"{flops / med / 1e9:,.1f} GFLOP/s"
                + (
                    f", MFU {flops / med / peak:.1%} of {peak / 1e12:.0f} TFLOP/s"
                    if peak and side == "JAX"
                    else ""
                )
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if run_torch is None:
        print("PyTorch side skipped (--torch=false); no ratio")
        return
    print(
        f"JAX/PyTorch throughput ratio: {tps['JAX'] / tps['PyTorch']:.2f} (medians; best-of-"
        f"{FLAGS.repeats}: {best['JAX'] / best['PyTorch']:.2f})"
    )


if __name__ == "__main__":
    app.run(main)
