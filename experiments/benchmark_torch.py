r"""geom-jax's fused pipeline against the paper's PyTorch pipeline, same run.

The baseline is the paper's way: Hugging Face transformers forward with
``output_hidden_states=True`` in the model's dtype, then per layer
scikit-learn distance and cosine matrices, GRIDE by bisection and the
per-token Python overlap loop (geom_jax.baseline). geom-jax runs the jitted
forward + layer_geometry step. Both see the same token ids; prompts alternate
between the sides so both meet the same machine load. The script checks that
the results agree, prints per-stage times, prompts/s for each side, and the
end-to-end speed-up as its last line.

  python experiments/benchmark_torch.py --model=smollm2-135m --num_prompts=8 --max_tokens=1024
  python experiments/benchmark_torch.py --model=llama-3-8b --random_weights \
      --dtype=bfloat16 --batch_size=8 --torch_prompts=1      # on an accelerator
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np
from absl import app, flags

from geom_jax import cli

cli.quiet_startup()

from geom_jax import benchmarking  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m", "Model alias, path, Hub id (or preset name).")
flags.DEFINE_string("dataset", "pydoc", "Prompt source (ignored with --random_weights).")
flags.DEFINE_integer("num_prompts", 8, "Prompts timed on the JAX side.")
flags.DEFINE_integer(
    "torch_prompts", None, "Prompts timed on the baseline (default: all; it is slow)."
)
flags.DEFINE_integer("max_tokens", 1024, "Tokens per prompt.")
flags.DEFINE_integer("batch_size", 1, "Prompts per jitted step.")
flags.DEFINE_bool(
    "random_weights", False, "Random parameters of the model's full-size preset, random tokens."
)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Model dtype (both sides).")
flags.DEFINE_integer(
    "range_max", None, "GRIDE range_max (default: the largest N supports, up to 256)."
)
flags.DEFINE_integer("max_k", 32, "Neighbourhood-overlap max_k.")
flags.DEFINE_bool("torch", True, "Run the PyTorch baseline.")
flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s of one device, for the forward's MFU.")
flags.DEFINE_integer("seed", 0, "Seed of random tokens and weights.")
flags.DEFINE_float(
    "pause",
    1.0,
    "Idle seconds before each timed step (untimed), so one runtime's spinning worker "
    "threads do not slow the other.",
)

BASELINE_STAGES = ("forward", "distances", "cosine", "gride", "twonn", "overlap")


def _prompts(tokenizer_model, vocab_size):
    from geom_jax import data, models  # pylint: disable=g-import-not-at-top

    if FLAGS.random_weights:
        rng = np.random.default_rng(FLAGS.seed)
        return rng.integers(0, vocab_size, (FLAGS.num_prompts, FLAGS.max_tokens), dtype=np.int32)
    sel = data.select_prompts(
        data.open_source(FLAGS.dataset),
        [models.load_tokenizer(tokenizer_model)],
        max_tokens=FLAGS.max_tokens,
        num_prompts=FLAGS.num_prompts,
        dataset_name=FLAGS.dataset,
    )
    return sel.token_ids


def _jax_side(ids):
    """Loads the model, compiles, and returns a per-batch runner and stage timers."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    from geom_jax import metrics, models, pipeline  # pylint: disable=g-import-not-at-top

    dtype = jnp.dtype(FLAGS.dtype)
    t = time.perf_counter()
    if FLAGS.random_weights:
        model = models.init_random(
            models.presets.get(FLAGS.model), seed=FLAGS.seed, dtype=dtype, param_dtype=dtype
        )
    else:
        model, _ = models.load(FLAGS.model, dtype=dtype, param_dtype=dtype, tokenizer=False)
    print(f"JAX: model ready in {time.perf_counter() - t:.1f} s on {jax.devices()[0].device_kind}")
    pipe = pipeline.GeometryPipeline(model, range_max=FLAGS.range_max, max_k=FLAGS.max_k)
    batch = ids[: FLAGS.batch_size]
    t = time.perf_counter()
    jax.block_until_ready(pipe(batch))
    compile_s = time.perf_counter() - t

    def run(rows):
        return pipe.to_host(pipe(rows))

    forward = models.forward  # jitted, graphdef static
    reduce = jax.jit(
        lambda h: metrics.layer_geometry(
            jnp.moveaxis(h, 0, 1)[:, 1:], range_max=FLAGS.range_max, max_k=FLAGS.max_k
        )
    )
    hidden = forward(pipe.graphdef, pipe.state, jnp.asarray(batch)).hidden_states
    jax.block_until_ready(reduce(hidden))

    def stages():
        t0 = time.perf_counter()
        h = jax.block_until_ready(forward(pipe.graphdef, pipe.state, jnp.asarray(batch)))
        t1 = time.perf_counter()
        jax.block_until_ready(reduce(h.hidden_states))
        return t1 - t0, time.perf_counter() - t1

    return model, run, stages, compile_s


def _torch_side():
    import torch  # pylint: disable=g-import-not-at-top
    from sklearn.metrics.pairwise import cosine_similarity  # pylint: disable=g-import-not-at-top

    from geom_jax.baseline import metrics_numpy  # pylint: disable=g-import-not-at-top
    from geom_jax.baseline import torch_forward as tf  # pylint: disable=g-import-not-at-top

    t = time.perf_counter()
    tmodel = tf.model_for(
        FLAGS.model, random_weights=FLAGS.random_weights, dtype=FLAGS.dtype, seed=FLAGS.seed
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tmodel = tmodel.to(device)
    print(
        f"PyTorch {torch.__version__} on {device} ({torch.get_num_threads()} threads): "
        f"model ready in {time.perf_counter() - t:.1f} s"
    )

    def run(row):
        times = {}
        t0 = time.perf_counter()
        out = tf.forward(tmodel, row[None])
        hidden = np.stack([h[0].float().cpu().numpy() for h in out.hidden_states])
        loss = float(out.loss)
        times["forward"] = time.perf_counter() - t0
        geo = metrics_numpy.paper_layer_geometry(hidden[1:], FLAGS.range_max, FLAGS.max_k)
        t0 = time.perf_counter()
        cos0 = cosine_similarity(hidden[0])
        geo["cos_mean"] = np.concatenate([[cos0.mean()], geo["cos_mean"]])
        geo["cos_std"] = np.concatenate([[cos0.std()], geo["cos_std"]])
        times.update(geo.pop("times"))
        times["cosine"] += time.perf_counter() - t0
        geo["loss"] = loss
        return geo, times, hidden

    return run


def _tie_equivalent(x, idx_a, idx_b, rtol=1e-6):
    """Rows whose neighbour lists differ, and whether each difference is a tie.

    Two lists of the k nearest neighbours of point i are tie-equivalent when
    their float64 distances, sorted, agree to ``rtol``: they differ only in
    which of (nearly) equidistant points they took, which float32 rounding
    decides (e.g. the first token's neighbours at |x| ~ 2e4).
    """
    differ = np.flatnonzero((np.sort(idx_a, 1) != np.sort(idx_b, 1)).any(1))
    ties = []
    for i in differ:
        xi = x[i].astype(np.float64)
        da = np.sort(np.linalg.norm(x[idx_a[i]].astype(np.float64) - xi, axis=1))
        db = np.sort(np.linalg.norm(x[idx_b[i]].astype(np.float64) - xi, axis=1))
        ties.append(bool(np.all(np.abs(da - db) <= rtol * np.maximum(da, db))))
    return len(differ), all(ties)


def _neighbour_check(hidden, max_k):
    """JAX knn lists vs the baseline's argsort lists on the same hidden states."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from sklearn.metrics.pairwise import euclidean_distances  # pylint: disable=g-import-not-at-top

    from geom_jax import metrics  # pylint: disable=g-import-not-at-top

    rows, tie_only = 0, True
    for x in hidden:
        idx_jax = np.asarray(metrics.knn(jnp.asarray(x), max_k)[1])
        idx_base = np.argsort(euclidean_distances(x), axis=1)[:, 1 : max_k + 1]
        for k in range(1, max_k + 1):
            n, ties = _tie_equivalent(x, idx_jax[:, :k], idx_base[:, :k])
            rows += n
            tie_only &= ties
    return rows, tie_only


def _agreement(jax_rows, torch_rows, jax_on_torch_hidden):
    """Relative ID error, overlap differences and loss difference over prompts."""
    ids_j = np.stack([r["gride_ids"] for r in jax_rows])
    ids_t = np.stack([r["gride_ids"] for r in torch_rows])
    id_rel = np.nanmax(np.abs(ids_j - ids_t) / np.abs(ids_t))
    ov_j = np.stack([r["overlap"] for r in jax_rows])
    ov_t = np.stack([r["overlap"] for r in torch_rows])
    loss_diff = max(abs(float(a["loss"]) - float(b["loss"])) for a, b in zip(jax_rows, torch_rows))
    same_input = np.stack([r["overlap"] for r in jax_on_torch_hidden])
    return {
        "id_rel": float(id_rel),
        "overlap_max_abs": float(np.max(np.abs(ov_j - ov_t))),
        "overlap_same_input_equal": bool(np.array_equal(same_input, ov_t)),
        "overlap_same_input_max_abs": float(np.max(np.abs(same_input - ov_t))),
        "loss_abs": loss_diff,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    from geom_jax import metrics, models  # pylint: disable=g-import-not-at-top

    if FLAGS.num_prompts % FLAGS.batch_size:
        sys.exit(f"error: --num_prompts={FLAGS.num_prompts} is not a multiple of --batch_size")
    try:
        FLAGS.range_max = metrics.check_sizes(
            FLAGS.max_tokens, range_max=FLAGS.range_max, max_k=FLAGS.max_k
        )
    except ValueError as e:
        sys.exit(f"error: {e}")
    vocab = models.presets.get(FLAGS.model).vocab_size if FLAGS.random_weights else None
    ids = _prompts(FLAGS.model, vocab)
    model, run_jax, jax_stages, compile_s = _jax_side(ids)
    cfg = model.config
    print(
        f"{len(ids)} prompts x {FLAGS.max_tokens} tokens "
        f"({'random' if FLAGS.random_weights else FLAGS.dataset}); "
        f"{cfg.family}, {cfg.num_layers} layers, d={cfg.hidden_size}, dtype={FLAGS.dtype}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"JAX compile + first step: {compile_s:.2f} s (excluded from the timings below)")

    n_torch = min(FLAGS.torch_prompts or len(ids), len(ids)) if FLAGS.torch else 0
    run_torch = _torch_side() if n_torch else None
    jax_time, jax_rows, torch_rows, torch_times, same_input = 0.0, [], [], [], []
    differing_lists, tie_only = 0, True
    reduce = jax.jit(
        lambda h: metrics.layer_geometry(h, range_max=FLAGS.range_max, max_k=FLAGS.max_k)
    )
    for start in range(0, len(ids), FLAGS.batch_size):
        rows = ids[start : start + FLAGS.batch_size]
        time.sleep(FLAGS.pause)
        t = time.perf_counter()
        out = run_jax(rows)
        jax_time += time.perf_counter() - t
        jax_rows += [{k: v[i] for k, v in out.items()} for i in range(len(rows))]
        for i in range(start, min(start + len(rows), n_torch)):
            time.sleep(FLAGS.pause)
            geo, times, hidden = run_torch(ids[i])
            torch_rows.append(geo)
            torch_times.append(times)
            same_input.append({"overlap": np.asarray(reduce(jnp.asarray(hidden[1:])).overlap)})
            if not np.array_equal(same_input[-1]["overlap"], geo["overlap"]):
                n, ties = _neighbour_check(hidden[1:], FLAGS.max_k)
                differing_lists, tie_only = differing_lists + n, tie_only and ties
    time.sleep(FLAGS.pause)
    fwd, met = zip(*[jax_stages() for _ in range(3)])
    per = FLAGS.batch_size
    print(
        f"JAX stages per prompt: forward {statistics.median(fwd) / per:.3f} s, "
        f"metrics {statistics.median(met) / per:.3f} s; fused end-to-end "
        f"{jax_time / len(ids):.3f} s"
    )
    flops = cfg.flops_per_token(FLAGS.max_tokens) * FLAGS.max_tokens * per
    peak = benchmarking.peak_flops(jax.devices()[0], FLAGS.peak_tflops)
    achieved = flops / statistics.median(fwd)
    print(
        f"JAX forward: {achieved / 1e9:,.1f} GFLOP/s"
        + (f", MFU {achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else "")
    )
    jax_pps = len(ids) / jax_time
    print(f"JAX fused pipeline: {jax_pps:.3f} prompts/s")
    if not n_torch:
        print("PyTorch baseline skipped; no ratio")
        return
    stage = {s: statistics.mean(t[s] for t in torch_times) for s in BASELINE_STAGES}
    torch_per_prompt = sum(stage.values())
    print(
        "PyTorch baseline stages per prompt: "
        + ", ".join(f"{s} {v:.3f} s" for s, v in stage.items())
        + f"; total {torch_per_prompt:.3f} s"
    )
    torch_pps = 1.0 / torch_per_prompt
    print(f"PyTorch baseline: {torch_pps:.4f} prompts/s ({n_torch} prompts)")
    if FLAGS.random_weights:
        print("Agreement: not checked (random weights differ between the sides)")
    else:
        a = _agreement(jax_rows[:n_torch], torch_rows, same_input)
        overlap_text = (
            "identical"
            if a["overlap_same_input_equal"]
            else f"max abs diff {a['overlap_same_input_max_abs']:.1e}, from {differing_lists} "
            "(token, k) neighbour lists that differ "
            + ("only by float32 ties" if tie_only else "NOT ONLY BY TIES")
        )
        ok = a["id_rel"] <= 1e-2 and a["loss_abs"] <= 1e-4 and tie_only
        print(
            f"Agreement {'OK' if ok else 'FAILED'}: GRIDE ID max rel diff {a['id_rel']:.2e} "
            f"(<= 1e-2), loss max abs diff {a['loss_abs']:.2e} (<= 1e-4); overlap on the same "
            f"hidden states: {overlap_text}; overlap end to end max abs "
            f"{a['overlap_max_abs']:.1e} (the two forwards differ by float rounding)"
        )
    print(f"End-to-end speed-up, JAX / PyTorch baseline: {jax_pps / torch_pps:.1f}x")


if __name__ == "__main__":
    app.run(main)
