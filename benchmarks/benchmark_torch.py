r"""geom-jax's fused pipeline against the paper's pipeline and a peer, same run.

Three pipelines on the same token ids: ``paper`` (Hugging Face transformers
forward with ``output_hidden_states=True`` in the same dtype, then the
paper's metric code operation for operation, benchmarks/paper.py), ``peer``
(the same forward, then DADApy 0.3.x + scikit-learn, benchmarks/peer.py in
the ``make bench-env`` environment, as one subprocess for all prompts) and
``geom-jax`` (the jitted forward + layer_geometry step). Prompts alternate
between geom-jax and the PyTorch forward so both meet the same machine load.
Prints per-stage times, agreement, and as the last line the end-to-end
speed-up against the peer.

  python -m benchmarks.benchmark_torch --model=smollm2-135m --num_prompts=8 --max_tokens=1024
  python -m benchmarks.benchmark_torch --model=llama-3-8b --random_weights \
      --dtype=bfloat16 --batch_size=8 --torch_prompts=1 --nopaper   # on an accelerator
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

from benchmarks import benchmarking  # noqa: E402

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
flags.DEFINE_bool("torch", True, "Run the PyTorch forward (the paper and peer columns need it).")
flags.DEFINE_bool("paper", True, "Run the paper column's metrics (benchmarks/paper.py).")
flags.DEFINE_bool("peer", True, "Run the peer column's metrics (needs `make bench-env`).")
flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s of one device, for the forward's MFU.")
flags.DEFINE_integer("seed", 0, "Seed of random tokens and weights.")
flags.DEFINE_float(
    "pause",
    1.0,
    "Idle seconds before each timed step (untimed), so one runtime's spinning worker "
    "threads do not slow the other.",
)

STAGES = ("forward", "distances", "cosine", "gride", "twonn", "overlap")


def _prompts(tokenizer_model, vocab_size):
    from geom_jax import data, models  # noqa: PLC0415

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
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from geom_jax import metrics, models, pipeline  # noqa: PLC0415

    dtype, param_dtype = pipeline.execution_dtypes(FLAGS.dtype, FLAGS.dtype)
    t = time.perf_counter()
    if FLAGS.random_weights:
        model = models.init_random(
            models.presets.get(FLAGS.model), seed=FLAGS.seed, dtype=dtype, param_dtype=param_dtype
        )
    else:
        model, _ = models.load(FLAGS.model, dtype=dtype, param_dtype=param_dtype, tokenizer=False)
    print(
        f"JAX: model ready in {time.perf_counter() - t:.1f} s on {jax.devices()[0].device_kind} "
        f"(compute {dtype.name}, parameters {param_dtype.name})"
    )
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
    """The HF model; returns forward(row) -> (hidden [L+1, T, D] float32, loss, seconds)."""
    import torch  # noqa: PLC0415

    from benchmarks import torch_forward as tf  # noqa: PLC0415

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

    tf.forward(tmodel, np.zeros((1, 8), np.int64))  # warm-up, untimed

    def forward(row):
        t0 = time.perf_counter()
        out = tf.forward(tmodel, row[None])
        hidden = np.stack([h[0].float().cpu().numpy() for h in out.hidden_states])
        return hidden, float(out.loss), time.perf_counter() - t0

    return forward


def _embedding_cosine(hidden0, geo, times):
    """Prepends the embedding layer's cosine statistics (scikit-learn), timed as cosine."""
    from sklearn.metrics.pairwise import cosine_similarity  # noqa: PLC0415

    t0 = time.perf_counter()
    cos0 = cosine_similarity(hidden0)
    geo["cos_mean"] = np.concatenate([[cos0.mean()], geo["cos_mean"]])
    geo["cos_std"] = np.concatenate([[cos0.std()], geo["cos_std"]])
    times["cosine"] += time.perf_counter() - t0


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
    import jax.numpy as jnp  # noqa: PLC0415
    from sklearn.metrics.pairwise import euclidean_distances  # noqa: PLC0415

    from geom_jax import metrics  # noqa: PLC0415

    rows, tie_only = 0, True
    for x in hidden:
        idx_jax = np.asarray(metrics.knn(jnp.asarray(x), k=max_k)[1])
        idx_base = np.argsort(euclidean_distances(x), axis=1)[:, 1 : max_k + 1]
        for k in range(1, max_k + 1):
            n, ties = _tie_equivalent(x, idx_jax[:, :k], idx_base[:, :k])
            rows += n
            tie_only &= ties
    return rows, tie_only


def _agreement(jax_rows, ref_rows):
    """GRIDE ID relative error, overlap mean / max abs and loss difference over prompts."""
    ids_j = np.stack([r["gride_ids"] for r in jax_rows])
    ids_r = np.stack([r["gride_ids"] for r in ref_rows])
    ov = np.abs(
        np.stack([r["overlap"] for r in jax_rows]) - np.stack([r["overlap"] for r in ref_rows])
    )
    return {
        "id_rel": float(np.nanmax(np.abs(ids_j - ids_r) / np.abs(ids_r))),
        "overlap_mean_abs": float(np.mean(ov)),
        "overlap_max_abs": float(np.max(ov)),
        "loss_abs": max(
            abs(float(a["loss"]) - float(b["loss"])) for a, b in zip(jax_rows, ref_rows)
        ),
    }


def _print_agreement(name, a):
    ok = a["id_rel"] <= 1e-2 and a["overlap_mean_abs"] <= 1e-3 and a["loss_abs"] <= 1e-4
    print(
        f"Agreement geom-jax vs {name} {'OK' if ok else 'FAILED'}: GRIDE ID max rel diff "
        f"{a['id_rel']:.2e} (<= 1e-2), overlap mean abs diff {a['overlap_mean_abs']:.1e} "
        f"(<= 1e-3; max {a['overlap_max_abs']:.1e}), loss max abs diff {a['loss_abs']:.2e} "
        "(<= 1e-4); the two forwards differ by float rounding"
    )
    return ok


def _print_column(name, forward_s, times, n):
    stage = {"forward": forward_s / n, **{k: v / n for k, v in times.items()}}
    total = sum(stage.values())
    print(
        f"{name} per prompt: "
        + ", ".join(f"{s} {v:.3f} s" for s, v in stage.items())
        + f"; total {total:.3f} s"
    )
    return total


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from benchmarks import paper  # noqa: PLC0415
    from geom_jax import metrics, models  # noqa: PLC0415

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
    if n_torch and FLAGS.peer:
        try:
            benchmarking.check_peer_env()
        except RuntimeError as e:
            sys.exit(f"error: {e}")
    torch_forward = _torch_side() if n_torch else None
    jax_time, jax_rows, forward_s, hiddens, losses = 0.0, [], 0.0, [], []
    paper_rows, paper_times, same_input = [], [], []
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
            hidden, loss, sec = torch_forward(ids[i])
            forward_s += sec
            losses.append(loss)
            hiddens.append(hidden)
            if not FLAGS.paper:
                continue
            geo = paper.paper_layer_geometry(hidden[1:], FLAGS.range_max, FLAGS.max_k)
            times = geo.pop("times")
            _embedding_cosine(hidden[0], geo, times)
            paper_rows.append(dict(geo, loss=loss))
            paper_times.append(times)
            same = np.asarray(reduce(jnp.asarray(hidden[1:])).overlap)
            same_input.append(np.array_equal(same, geo["overlap"]))
            if not same_input[-1]:
                n, ties = _neighbour_check(hidden[1:], FLAGS.max_k)
                differing_lists, tie_only = differing_lists + n, tie_only and ties
    peer_rows, peer_times = [], None
    if n_torch and FLAGS.peer:
        time.sleep(FLAGS.pause)
        got = benchmarking.run_peer(
            np.stack([h[1:] for h in hiddens]), range_max=FLAGS.range_max, max_k=FLAGS.max_k
        )
        peer_times = got.pop("times")
        got.pop("cpu_s")
        for i in range(n_torch):
            geo = {k: v[i] for k, v in got.items()}
            _embedding_cosine(hiddens[i][0], geo, peer_times)
            peer_rows.append(dict(geo, loss=losses[i]))
    time.sleep(FLAGS.pause)
    fwd, met = zip(*[jax_stages() for _ in range(3)])
    per = FLAGS.batch_size
    jax_per_prompt = jax_time / len(ids)
    print(
        f"geom-jax per prompt: forward {statistics.median(fwd) / per:.3f} s, "
        f"metrics {statistics.median(met) / per:.3f} s (stages jitted separately); fused "
        f"end-to-end {jax_per_prompt:.3f} s"
    )
    flops = cfg.flops_per_token(FLAGS.max_tokens) * FLAGS.max_tokens * per
    peak = benchmarking.peak_flops(jax.devices()[0], FLAGS.peak_tflops)
    achieved = flops / statistics.median(fwd)
    print(
        f"geom-jax forward: {achieved / 1e9:,.1f} GFLOP/s"
        + (f", MFU {achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else "")
    )
    print(f"geom-jax fused pipeline: {1 / jax_per_prompt:.3f} prompts/s")
    if not n_torch:
        print("PyTorch forward skipped; no ratio")
        return
    ok, ratios = True, {}
    if paper_rows:
        total = _print_column(
            "paper (HF forward + the paper's code)", forward_s, _sum(paper_times), n_torch
        )
        ratios["paper"] = total / jax_per_prompt
        if not FLAGS.random_weights:
            ok &= _print_agreement("paper", _agreement(jax_rows[:n_torch], paper_rows))
            overlap_text = (
                "identical"
                if all(same_input)
                else f"{differing_lists} (token, k) neighbour lists differ "
                + ("only by float32 ties" if tie_only else "NOT ONLY BY TIES")
            )
            ok &= tie_only
            print(f"geom-jax overlap on the paper's hidden states: {overlap_text}")
    if peer_rows:
        total = _print_column(
            "peer (HF forward + DADApy/scikit-learn)", forward_s, peer_times, n_torch
        )
        ratios["peer"] = total / jax_per_prompt
        if not FLAGS.random_weights:
            ok &= _print_agreement("peer", _agreement(jax_rows[:n_torch], peer_rows))
    if FLAGS.random_weights:
        print("Agreement: not checked (random weights differ between the sides)")
    if "paper" in ratios:
        print(f"End-to-end speed-up vs paper: {ratios['paper']:.1f}x")
    if "peer" in ratios:
        print(f"End-to-end speed-up vs peer: {ratios['peer']:.2f}x")
    if not ok:
        sys.exit(1)


def _sum(times):
    return {k: sum(t[k] for t in times) for k in times[0]}


if __name__ == "__main__":
    app.run(main)
