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

BUILD_NOTES.md (section 6, "Device check") has the exact command for a lent
device machine and what each stage measures.

Needs only jax, flax, numpy and absl (no GGUF, torch, datasets or download):
every model is a preset with random weights generated on the device.
"""

from __future__ import annotations

import os

# Before jax starts: let a GPU's allocator take 92% of the card (default 75%).
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")

import dataclasses
import datetime
import functools
import gc
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks import benchmarking
from geom_jax import metrics, models, pipeline, sharding

REPORT_JSON = "device_report.json"
REPORT_MD = "device_report.md"
STAGES = ("correctness", "forward", "metrics", "clouds", "fused", "projection")
COMPUTE_STAGES = STAGES[:-1]

# The paper's sweep (Sec. 3): 2,244 Pile-10K prompts of 1024 tokens, each also
# block-shuffled at s = 1..5 (6 levels with the original), on three models; the
# authors report about 40 minutes on 4 H100s plus 25 minutes on 192 CPU cores
# per model.
PAPER_PROMPTS = 2244
PAPER_SHUFFLE_LEVELS = 6
PAPER_MODELS = ("llama-3-8b", "mistral-7b", "pythia-6.9b")
PAPER_MINUTES = {"gpu (4 x H100)": 40.0, "cpu (192 cores)": 25.0}


# ---------------------------------------------------------------------------
# The observable set: the one place where it is chosen. Every field the fused
# step and layer_geometry return is compared (fields present on one side only
# fail); a field without a row in TOLERANCES gets DEFAULT_TOLERANCE.
# ---------------------------------------------------------------------------
def observable_options() -> dict:
    """Keyword arguments choosing the fused correctness run's observables: every
    registered one where geom_jax.metrics has a registry (issue 10), else the
    library's only set, the paper's."""
    if hasattr(metrics, "registry"):
        return {"observables": "all"}
    return {}


TOLERANCES = {
    # field: (statistic, limit); "max_rel" is max |a - b| / max(|b|, 1e-3 max|b|)
    "gride_ids": ("max_rel", 1e-3),
    "gride_errs": ("max_rel", 1e-3),
    "gride_scales": ("max_rel", 1e-3),
    "twonn": ("max_rel", 1e-3),
    "twonn_ml": ("max_rel", 1e-3),
    "overlap": ("mean_abs", 1e-3),
    "cos_mean": ("max_rel", 1e-3),
    "cos_std": ("max_rel", 1e-3),
    "n_unique": ("max_abs", 0.0),
    "loss": ("max_rel", 1e-4),
    "token_nll": ("max_rel", 1e-4),
}
DEFAULT_TOLERANCE = ("max_rel", 1e-3)


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


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
    """Shapes of one run; `quick` shrinks every preset and shape."""

    quick: bool
    correctness_model: str = "smollm2-135m"
    correctness_batch: int = 2
    correctness_tokens: int = 1024
    range_max: int = 256
    max_k: int = 32
    forward_model: str = "llama-3-8b"
    tokens: int = 1024
    max_batch: int = 256
    fused_max_batch: int = 64
    metric_layers: int = 33
    metric_dim: int = 4096
    # (batch, layer_chunk) runs of the metric kernels; None: the library's choice
    metric_runs: tuple[tuple[int, int | None], ...] = ((1, None), (4, None), (4, 33))
    # One layer of a dataset-scale cloud (one point per prompt) on the row-blocked path.
    cloud_points: int = 100_000
    cloud_dim: int = 4096
    cloud_range_max: int = 256
    fused_models: tuple[str, ...] = PAPER_MODELS  # measured; the projection scales the rest
    repeats: int = 2
    # Seconds a stage needs at least: it is skipped when less of the budget is
    # left, and an earlier stage's searches leave the later stages' estimates.
    estimates: tuple[tuple[str, float], ...] = (
        ("correctness", 60.0),
        ("forward", 90.0),
        ("metrics", 30.0),
        ("clouds", 60.0),
        ("fused", 100.0),
    )

    def estimate(self, stage: str) -> float:
        return dict(self.estimates).get(stage, 0.0)


def make_settings(quick: bool, max_batch: int = 256) -> Settings:
    if not quick:
        return Settings(quick=False, max_batch=max_batch)
    return Settings(
        quick=True,
        correctness_tokens=64,
        range_max=16,
        max_k=8,
        tokens=64,
        max_batch=min(max_batch, 2),
        fused_max_batch=2,
        fused_models=("llama-3-8b", "pythia-6.9b"),
        metric_layers=5,
        metric_dim=64,
        metric_runs=((2, None),),
        cloud_points=5000,
        cloud_dim=64,
        cloud_range_max=64,
        repeats=2,
        estimates=(
            ("correctness", 5.0),
            ("forward", 5.0),
            ("metrics", 2.0),
            ("clouds", 3.0),
            ("fused", 5.0),
        ),
    )


def shrink(cfg: models.DecoderConfig) -> models.DecoderConfig:
    """The same family and options at toy size (for --quick)."""
    kv = 4 if cfg.num_kv_heads == cfg.num_heads else 2
    return cfg.replace(
        num_layers=3,
        hidden_size=64,
        num_heads=4,
        num_kv_heads=kv,
        head_dim=16,
        intermediate_size=128,
        vocab_size=512,
        rotary_dim=16 * cfg.rotary_dim // cfg.head_dim,
    )


def model_config(name: str, s: Settings) -> models.DecoderConfig:
    cfg = models.presets.get(name)
    return shrink(cfg) if s.quick else cfg


# --------------------------------------------------------------------------- budget


class Budget:
    """Seconds left of `seconds`, read from `clock` (injectable for tests)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter):
        self.seconds = float(seconds)
        self.clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()


def log(budget: Budget, msg: str) -> None:
    print(f"[device_check {budget.elapsed():7.1f} s] {msg}", flush=True)


def run_stages(stages, budget: Budget, report: dict, on_update=lambda report: None):
    """Runs (name, estimate_s, fn) in order: skipped with a note when less than
    estimate_s of the budget is left (estimate None: always runs), an exception
    is recorded as the stage's error; on_update(report) after each stage."""
    for name, estimate, fn in stages:
        left = budget.remaining()
        if estimate is not None and left < estimate:
            report[name] = {
                "skipped": True,
                "note": (
                    f"skipped: {max(left, 0.0):.0f} s of the {budget.seconds:.0f} s budget left, "
                    f"the stage needs about {estimate:.0f} s"
                ),
            }
            log(budget, f"{name}: {report[name]['note']}")
        else:
            log(budget, f"{name}: start")
            t0 = budget.elapsed()
            try:
                result = dict(fn())
            except Exception as e:  # a failing stage must not stop the others
                result = {
                    "error": f"{type(e).__name__}: {e}"[:2000],
                    "traceback": traceback.format_exc()[-4000:],
                }
                log(budget, f"{name}: FAILED {result['error'][:300]}")
            result["seconds"] = round(budget.elapsed() - t0, 2)
            report[name] = result
            log(budget, f"{name}: done in {result['seconds']:.1f} s")
        on_update(report)
    return report


# --------------------------------------------------------------------------- comparisons


def deviation(a, b, statistic: str) -> float:
    """Deviation of a from the reference b: "max_rel", "mean_abs" or "max_abs".
    inf when shapes or the positions of non-finite values differ."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    fa, fb = np.isfinite(a), np.isfinite(b)
    if np.any(fa != fb) or np.any(~fa & (a != b) & ~(np.isnan(a) & np.isnan(b))):
        return math.inf
    a, b = a[fa], b[fb]
    if a.size == 0:
        return 0.0
    diff = np.abs(a - b)
    if statistic == "mean_abs":
        return float(np.mean(diff))
    if statistic == "max_abs":
        return float(np.max(diff))
    if statistic == "max_rel":
        floor = max(1e-3 * float(np.max(np.abs(b))), 1e-30)
        return float(np.max(diff / np.maximum(np.abs(b), floor)))
    raise ValueError(f"unknown statistic {statistic!r}")


def compare(result, reference) -> dict:
    """Per-field deviations of result from reference (mappings of arrays) and ok;
    a field missing on one side has deviation inf."""
    rows = {}
    for name in list(reference) + [n for n in result if n not in reference]:
        statistic, limit = TOLERANCES.get(name, DEFAULT_TOLERANCE)
        if name in result and name in reference:
            value = deviation(result[name], reference[name], statistic)
        else:
            value = math.inf
        rows[name] = {
            "statistic": statistic,
            "value": value,
            "limit": limit,
            "ok": bool(value <= limit),
        }
    return {"ok": all(r["ok"] for r in rows.values()), "fields": rows}


def as_dict(tree) -> dict:
    """Field name -> NumPy array of a result (a dataclass or a mapping)."""
    if dataclasses.is_dataclass(tree):
        return {f.name: np.asarray(getattr(tree, f.name)) for f in dataclasses.fields(tree)}
    return {name: np.asarray(value) for name, value in tree.items()}


# --------------------------------------------------------------------------- timing and batches


def is_oom(e: BaseException) -> bool:
    text = str(e)
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory"))


def time_runs(fn, repeats: int) -> tuple[float, list[float]]:
    """Runs fn() once to warm up (and to fail early), then `repeats` timed runs;
    returns (median seconds, all timed seconds)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def predict_batch(device, compile_at_one, max_batch: int) -> tuple[int | None, str]:
    """A first batch to try, from the device's free memory and the compiled
    step's memory at batch 1 (counted as if all of it grew with the batch, so
    the guess errs low); None where the device reports no memory limit."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or not stats.get("bytes_limit"):
        return None, "no device memory limit reported; batch search doubles from 1"
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    mem = compile_at_one().memory_analysis()
    per_prompt = max(1, mem.temp_size_in_bytes + mem.output_size_in_bytes)
    guess = int(0.9 * free // per_prompt)
    if guess >= 16:
        guess -= guess % 8
    guess = max(1, min(max_batch, guess))
    note = (
        f"{free / 2**30:.1f} GiB free, {per_prompt / 2**30:.2f} GiB per prompt at batch 1 "
        f"(temp + output): first try {guess}"
    )
    return guess, note


def find_batch(trial, *, first: int, max_batch: int, deadline: Callable[[], float]) -> dict:
    """The largest batch for which trial(batch) -> dict runs, by trying.

    Doubles from `first` while it fits (up to max_batch); after an out-of-memory
    failure (is_oom) bisects between the largest fit and the smallest failure
    until they are within 25%. Stops early when deadline() (seconds left for the
    search) is shorter than the last trial took, scaled by the batch ratio.
    Returns {"best": the largest fitting trial or None, "tries": [...], "note"}.
    """
    tries, best, fail = [], None, None
    b, last = max(1, min(first, max_batch)), None
    note = ""
    while True:
        if last is not None and deadline() < last["wall_s"] * b / last["batch"]:
            note = f"search stopped by the time budget before batch {b}"
            break
        t = time.perf_counter()
        try:
            row = dict(trial(b))
        except Exception as e:
            if not is_oom(e):
                raise
            gc.collect()
            tries.append({"batch": b, "fits": False, "error": str(e)[:300]})
            fail = b
            if best is None:
                if b == 1:
                    note = "batch 1 does not fit"
                    break
                b = max(1, b // 2)
                continue
        else:
            row.update(batch=b, fits=True, wall_s=round(time.perf_counter() - t, 2))
            tries.append(row)
            best, last = row, row
        if best is not None and best["batch"] >= max_batch:
            note = f"reached --max_batch={max_batch}"
            break
        if fail is None:
            b = min(2 * best["batch"], max_batch)
            continue
        lo = best["batch"]
        if fail - lo <= max(1, lo // 4):
            note = f"largest fit {lo}, smallest failure {fail}"
            break
        b = (lo + fail) // 2
    return {"best": best, "tries": tries, "note": note}


# --------------------------------------------------------------------------- synthetic data


@functools.partial(jax.jit, static_argnames=("shape",))
def synthetic_stack(key, shape):
    """Hidden states [B, L, N, D] float32 shaped like a residual stream: tokens
    near a curved 12-dimensional manifold, drifting by small residual updates
    through the layers (so consecutive layers share neighbourhoods), plus an
    offset that grows with depth. Generated on the device."""
    b, n_layers, n, d = shape
    k1, k2, k3, k4 = jax.random.split(key, 4)
    latent = jax.random.normal(k1, (b, 1, n, 12))
    base = 2.0 * jnp.tanh(latent @ (jax.random.normal(k2, (12, d)) / jnp.sqrt(12.0)))
    drift = jnp.cumsum(0.05 * jax.random.normal(k3, (b, n_layers, n, d)), axis=1)
    depth = jnp.arange(1, n_layers + 1, dtype=jnp.float32)[:, None, None]
    return base + drift + depth * jax.random.normal(k4, (d,))


def token_ids(rng, batch: int, tokens: int, vocab: int) -> np.ndarray:
    return rng.integers(0, vocab, (batch, tokens), dtype=np.int32)


# --------------------------------------------------------------------------- the check


class DeviceCheck:
    """The stages, sharing the device, settings, budget and the report."""

    def __init__(self, s: Settings, budget: Budget, *, seed=0, peak_tflops=None, stages=None):
        self.s = s
        self.stages = tuple(COMPUTE_STAGES if stages is None else stages)
        self.budget = budget
        self.seed = seed
        self.accel = jax.devices()[0]
        self.cpu = jax.devices("cpu")[0]
        self.peak = benchmarking.peak_flops(self.accel, peak_tflops)
        self.report: dict = {}
        self._model = None
        self.init_s = 0.0  # seconds the last fresh big_model took
        self._selection_inputs = None

    def log(self, msg):
        log(self.budget, msg)

    def stage_deadline(self, stage: str) -> Callable[[], float]:
        """Seconds left for a stage's searches: the budget left less the later
        stages' estimates."""
        later = STAGES[STAGES.index(stage) + 1 :]
        reserve = sum(self.s.estimate(name) for name in later if name in self.stages)
        return lambda: self.budget.remaining() - reserve

    def big_model(self, name: str) -> models.Decoder:
        """A random-weight bfloat16 preset on the accelerator, one at a time."""
        if self._model is not None and self._model[0] == name:
            return self._model[1]
        self._model = None
        gc.collect()
        t = time.perf_counter()
        with jax.default_device(self.accel):
            model = models.init_random(
                model_config(name, self.s),
                seed=self.seed,
                dtype=jnp.bfloat16,
                param_dtype=jnp.bfloat16,
            )
        jax.block_until_ready(nnx.state(model))
        self.init_s = time.perf_counter() - t
        self.log(f"{name}: random bfloat16 weights in {self.init_s:.1f} s")
        self._model = (name, model)
        return model

    # ------------------------------------------------------------------ correctness

    def correctness(self) -> dict:
        s = self.s
        cfg = model_config(s.correctness_model, s)
        rng = np.random.default_rng(self.seed)
        ids = token_ids(rng, s.correctness_batch, s.correctness_tokens, cfg.vocab_size)
        mask = np.ones_like(ids)
        mask[-1, -s.correctness_tokens // 8 :] = 0  # one padded prompt exercises the masks
        opts = dict(range_max=s.range_max, max_k=s.max_k)
        checks = {}
        # float32 matmuls at full precision on both sides, so that the comparison
        # tests the kernels and not TF32 rounding (a GPU's default for float32).
        with jax.default_matmul_precision("highest"):
            with jax.default_device(self.accel):
                model = models.init_random(cfg, seed=self.seed)
            on, pipes = {}, {}
            for side, device in (("accelerator", self.accel), ("cpu", self.cpu)):
                if device not in pipes:  # one compiled step where both sides are the CPU
                    pipes[device] = pipeline.GeometryPipeline(
                        model,
                        mesh=sharding.make_mesh((1, 1), [device]),
                        **opts,
                        **observable_options(),
                    )
                pipe = pipes[device]
                on[side] = as_dict(pipe.to_host(pipe(ids, mask)))
                self.log(f"correctness: fused step on {device.platform} done")
            checks["fused step: accelerator vs CPU backend"] = compare(on["accelerator"], on["cpu"])

            graphdef, state = nnx.split(model)
            out = models.forward(
                graphdef,
                state,
                jax.device_put(ids, self.accel),
                jax.device_put(mask, self.accel),
            )
            hidden = jnp.moveaxis(out.hidden_states, 0, 1)[:, 1:].astype(jnp.float32)
            valid = mask.astype(bool)
            xla = as_dict(
                metrics.layer_geometry(
                    hidden, jax.device_put(valid, self.accel), selection="xla", **opts
                ),
            )
            host = as_dict(
                metrics.layer_geometry(
                    jax.device_put(hidden, self.cpu),
                    jax.device_put(valid, self.cpu),
                    selection="host",
                    **opts,
                ),
            )
            checks["selection: xla on accelerator vs host on CPU backend"] = compare(xla, host)
            # kept for host_selection_on_accelerator, which runs after every stage
            self._selection_inputs = (hidden, jax.device_put(valid, self.accel), xla, opts)
        for name, c in checks.items():
            bad = [f for f, r in c["fields"].items() if not r["ok"]]
            self.log(f"correctness: {name}: {'OK' if c['ok'] else 'FAILED ' + ', '.join(bad)}")
        return {
            "ok": all(c["ok"] for c in checks.values()),
            "model": f"{cfg.name} preset, random float32 weights"
            + (" (shrunk for --quick)" if s.quick else ""),
            "batch": s.correctness_batch,
            "tokens": s.correctness_tokens,
            **opts,
            "matmul_precision": "highest",
            "observables": observable_options().get("observables", "paper"),
            "checks": checks,
            "informational": {},
        }

    def host_selection_on_accelerator(self) -> dict:
        """selection="host" given accelerator buffers, against "xla" on the same
        hidden states: informational (not in correctness.ok), and run after
        every stage, since a host callback handed device buffers may fail hard."""
        hidden, valid, xla, opts = self._selection_inputs
        try:
            host = metrics.layer_geometry(hidden, valid, selection="host", **opts)
            return compare(as_dict(host), xla)
        except Exception as e:
            return {"ok": False, "error": f"{type(e).__name__}: {e}"[:1000]}

    # ------------------------------------------------------------------ forward

    def forward(self) -> dict:
        s = self.s
        model = self.big_model(s.forward_model)
        cfg = model.config
        graphdef, state = nnx.split(model)
        rng = np.random.default_rng(self.seed + 1)
        flops_token = cfg.flops_per_token(s.tokens)

        def ids_at(b):
            return jax.device_put(token_ids(rng, b, s.tokens, cfg.vocab_size), self.accel)

        def compile_at(b):
            return models.forward.lower(graphdef, state, ids_at(b)).compile()

        def trial(b):
            t = time.perf_counter()
            compiled = compile_at(b)
            compile_s = time.perf_counter() - t
            ids = ids_at(b)
            step, _ = time_runs(lambda: compiled(state, ids), s.repeats)
            tps = b * s.tokens / step
            self.log(f"forward: batch {b}: {step:.3f} s per step, {tps:,.0f} tokens/s")
            return {
                "compile_s": round(compile_s, 2),
                "step_s": step,
                "tokens_per_s": tps,
                "mfu": tps * flops_token / self.peak if self.peak else None,
            }

        first, predict_note = predict_batch(self.accel, lambda: compile_at(1), s.max_batch)
        search = find_batch(
            trial,
            first=first or 1,
            max_batch=s.max_batch,
            deadline=self.stage_deadline("forward"),
        )
        best = search["best"] or {}
        return {
            "model": f"{cfg.name} preset, random bfloat16 weights and activations"
            + (" (shrunk for --quick)" if s.quick else ""),
            "tokens": s.tokens,
            "batch": best.get("batch"),
            "step_s": best.get("step_s"),
            "tokens_per_s": best.get("tokens_per_s"),
            "mfu": best.get("mfu"),
            "peak_tflops": self.peak / 1e12 if self.peak else None,
            "flops_per_token": flops_token,
            "batch_search": {"first_try": predict_note, **search},
            "note": "" if self.peak else "device peak unknown (pass --peak_tflops): no MFU",
        }

    # ------------------------------------------------------------------ metrics

    def metrics(self) -> dict:
        s = self.s
        n_layers, n, d = s.metric_layers, s.tokens, s.metric_dim
        deadline = self.stage_deadline("metrics")
        key = jax.random.key(self.seed)
        rows, note, last = [], "", 0.0
        for b, chunk in s.metric_runs:
            if rows and deadline() < last:
                note = f"runs from batch {b}, layer_chunk {chunk} on skipped (time budget)"
                break
            t0 = time.perf_counter()
            fn = jax.jit(
                functools.partial(
                    metrics.layer_geometry,
                    range_max=s.range_max,
                    max_k=s.max_k,
                    layer_chunk=chunk,
                )
            )
            with jax.default_device(self.accel):
                hidden = jax.block_until_ready(synthetic_stack(key, (b, n_layers, n, d)))
            t = time.perf_counter()
            compiled = fn.lower(hidden).compile()
            compile_s = time.perf_counter() - t
            step, _ = time_runs(functools.partial(compiled, hidden), s.repeats)
            last = time.perf_counter() - t0
            gram_flops = 2.0 * b * n_layers * n * n * d
            rows.append(
                {
                    "batch": b,
                    "layer_chunk": chunk or "auto",
                    "compile_s": round(compile_s, 2),
                    "step_s": step,
                    "seconds_per_prompt": step / b,
                    "gram_tflops_per_s": gram_flops / step / 1e12,
                }
            )
            self.log(
                f"metrics: batch {b}, layer_chunk {chunk or 'auto'}: {step:.3f} s, "
                f"{step / b:.4f} s per prompt"
            )
            del hidden
        best = min(rows, key=lambda r: r["seconds_per_prompt"])
        return {
            "shape_per_prompt": [n_layers, n, d],
            "range_max": s.range_max,
            "max_k": s.max_k,
            "selection": "auto (lax.top_k off CPU, NumPy on CPU)",
            "seconds_per_prompt": best["seconds_per_prompt"],
            "runs": rows,
            "note": note,
        }

    # ------------------------------------------------------------------ clouds

    def clouds(self) -> dict:
        """One layer of a dataset-scale cloud (cloud_points x cloud_dim, the paper's set,
        GRIDE range cloud_range_max) through layer_geometry's row-blocked path: time and
        the device's peak memory."""
        s = self.s
        n, d = s.cloud_points, s.cloud_dim
        with jax.default_device(self.accel):
            x = jax.block_until_ready(synthetic_stack(jax.random.key(self.seed + 5), (1, 1, n, d)))
        fn = jax.jit(
            functools.partial(
                metrics.layer_geometry,
                range_max=s.cloud_range_max,
                max_k=s.max_k,
                neighbour_path="blocked",
            )
        )
        t = time.perf_counter()
        compiled = fn.lower(x).compile()
        compile_s = time.perf_counter() - t
        step, _ = time_runs(functools.partial(compiled, x), s.repeats)
        stats = self.accel.memory_stats() if hasattr(self.accel, "memory_stats") else None
        peak = (stats or {}).get("peak_bytes_in_use")
        self.log(f"clouds: {n} x {d}, one layer: {step:.3f} s")
        del x
        return {
            "points": n,
            "dim": d,
            "range_max": s.cloud_range_max,
            "max_k": s.max_k,
            "path": "blocked",
            "compile_s": round(compile_s, 2),
            "step_s": step,
            "gram_tflops_per_s": 2.0 * n * n * d / step / 1e12,
            "peak_bytes": peak,
            "note": "" if peak else "the device reports no memory statistics",
        }

    # ------------------------------------------------------------------ fused

    def fused_for(self, name: str, first: int | None, deadline) -> dict:
        """The fused step's prompts/s for one model: at `first` prompts per step
        (None: predicted from the device's free memory, up to fused_max_batch),
        halved while it does not fit."""
        s = self.s
        t = time.perf_counter()
        model = self.big_model(name)
        init_s = time.perf_counter() - t
        cfg = model.config
        mesh = sharding.make_mesh((1, 1), [self.accel])
        graphdef, state = nnx.split(model)
        state = sharding.place_state(state, mesh)
        step_fn = jax.jit(
            functools.partial(
                pipeline.geometry_step,
                graphdef,
                mesh=mesh,
                options=dict(range_max=s.range_max, max_k=s.max_k),
            ),
            out_shardings=sharding.batch_sharding(mesh),
        )
        rng = np.random.default_rng(self.seed + 2)

        def inputs(b):
            ids = token_ids(rng, b, s.tokens, cfg.vocab_size)
            return sharding.to_global(mesh, ids), sharding.to_global(mesh, np.ones_like(ids))

        def trial(b):
            ids, mask = inputs(b)
            t = time.perf_counter()
            compiled = step_fn.lower(state, ids, mask).compile()
            compile_s = time.perf_counter() - t
            step, _ = time_runs(lambda: compiled(state, ids, mask), s.repeats)
            self.log(f"fused {name}: batch {b}: {step:.3f} s, {b / step:.2f} prompts/s")
            return {"compile_s": round(compile_s, 2), "step_s": step, "prompts_per_s": b / step}

        if first is None:
            first, note = predict_batch(
                self.accel, lambda: step_fn.lower(state, *inputs(1)).compile(), s.fused_max_batch
            )
            first = first or s.fused_max_batch
        else:
            note = f"the first model's batch, {first}"
        search = find_batch(trial, first=first, max_batch=first, deadline=deadline)
        best = search["best"] or {}
        return {
            "model": f"{cfg.name} preset, random bfloat16 weights"
            + (" (shrunk for --quick)" if s.quick else ""),
            "tokens": s.tokens,
            "batch": best.get("batch"),
            "step_s": best.get("step_s"),
            "prompts_per_s": best.get("prompts_per_s"),
            "flops_per_token": cfg.flops_per_token(s.tokens),
            "init_s": round(init_s, 2),
            "batch_search": {"first_try": note, **search},
        }

    def fused(self) -> dict:
        deadline = self.stage_deadline("fused")
        out, notes, first, need = {}, [], None, 0.0
        for i, name in enumerate(self.s.fused_models):
            if i and (first is None or deadline() < need):
                notes.append(f"{name}: skipped (time budget); the projection scales it by FLOPs")
                self.log(f"fused: {notes[-1]}")
                continue
            t = time.perf_counter()
            try:
                out[name] = self.fused_for(name, first, deadline)
            except Exception as e:
                if i == 0:
                    raise
                out[name] = {"error": f"{type(e).__name__}: {e}"[:1000]}
            out[name]["seconds"] = round(time.perf_counter() - t, 2)
            if i == 0:
                first = out[name]["batch"]
                best = out[name]["batch_search"]["best"] or {}
                # what the next model costs: a fresh model plus one trial at this batch
                need = self.init_s + best.get("wall_s", 0.0)
        self._model = None
        gc.collect()
        return {
            "range_max": self.s.range_max,
            "max_k": self.s.max_k,
            "models": out,
            "note": "; ".join(notes),
        }

    # ------------------------------------------------------------------ projection

    def cheng_projection(self) -> dict:
        """Cheng et al.'s protocol on Llama-3-8B: 10,000 points per partition, 5
        partitions, structured and shuffled, the last token of 20-token windows at 33
        hidden states: the forward of every row from the forward stage's tokens/s (at its
        sequence length), the geometry from the clouds stage's layer scaled by N^2 (its
        Gram FLOPs; the dimension is the model's, 4096)."""
        points, partitions, levels, layers, window = 10_000, 5, 2, 33, 20
        clouds = self.report.get("clouds", {})
        forward = self.report.get("forward", {})
        out = {
            "points_per_partition": points,
            "partitions": partitions,
            "levels": levels,
            "layers": layers,
            "window_tokens": window,
        }
        if not clouds.get("step_s") or not forward.get("tokens_per_s"):
            out["note"] = "the clouds or forward stage did not run: no projection"
            return out
        scale = (points / clouds["points"]) ** 2 * (4096 / clouds["dim"])
        geometry_s = clouds["step_s"] * scale * layers * partitions * levels
        forward_s = points * partitions * levels * window / forward["tokens_per_s"]
        out.update(
            geometry_minutes=geometry_s / 60,
            forward_minutes=forward_s / 60,
            total_minutes=(geometry_s + forward_s) / 60,
            note=(
                "--quick: toy shapes, so these minutes say nothing about the real protocol"
                if self.s.quick
                else "forward at the forward stage's sequence length (short windows run "
                "below its tokens/s)"
            ),
        )
        return out

    def projection(self) -> dict:
        """Minutes for the paper's sweep on one device, per model: from its own
        measured fused step, else Llama-3-8B's scaled by forward FLOPs, else the
        forward and metric stages added."""
        s = self.s
        fused = self.report.get("fused", {}).get("models", {})
        forward = self.report.get("forward", {})
        metric = self.report.get("metrics", {})
        ref_name = s.fused_models[0]
        ref = fused.get(ref_name, {})
        rows = {}
        for name in PAPER_MODELS:
            flops = model_config(name, s).flops_per_token(s.tokens)
            own = fused.get(name, {})
            per_prompt, source = None, None
            if own.get("prompts_per_s"):
                per_prompt, source = 1.0 / own["prompts_per_s"], "measured fused step"
            elif ref.get("prompts_per_s"):
                ratio = flops / ref["flops_per_token"]
                per_prompt = ratio / ref["prompts_per_s"]
                source = f"{ref_name}'s fused step x forward FLOPs ratio {ratio:.3f}"
            elif forward.get("tokens_per_s") and metric.get("seconds_per_prompt"):
                ratio = flops / forward["flops_per_token"]
                per_prompt = ratio * s.tokens / forward["tokens_per_s"]
                per_prompt += metric["seconds_per_prompt"]
                source = f"forward x FLOPs ratio {ratio:.3f} + metric kernels (not fused)"
            rows[name] = {"seconds_per_prompt": per_prompt, "source": source}
            if per_prompt is not None:
                rows[name]["minutes_structured"] = PAPER_PROMPTS * per_prompt / 60
                rows[name]["minutes_shuffled"] = (
                    PAPER_PROMPTS * PAPER_SHUFFLE_LEVELS * per_prompt / 60
                )
        known = [r for r in rows.values() if r["seconds_per_prompt"] is not None]
        paper_per_model = sum(PAPER_MINUTES.values())
        notes = []
        if len(known) < len(rows):
            notes.append("no step time measured for some models (stages skipped or failed)")
        if s.quick:
            notes.append("--quick: toy shapes, so these minutes say nothing about the real sweep")
        total = (
            sum(r["minutes_shuffled"] for r in known) if len(known) == len(rows) and rows else None
        )
        cheng = self.cheng_projection()
        return {
            "cheng_protocol": cheng,
            "prompts": PAPER_PROMPTS,
            "shuffle_levels": PAPER_SHUFFLE_LEVELS,
            "devices": 1,
            "models": rows,
            "total_minutes_shuffled": total,
            "paper_minutes_per_model": PAPER_MINUTES,
            "paper_total_minutes": paper_per_model * len(PAPER_MODELS),
            "speedup_vs_paper": paper_per_model * len(PAPER_MODELS) / total if total else None,
            "note": "; ".join(notes),
        }


# --------------------------------------------------------------------------- report files


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic,)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def _fmt(x, spec=".3g"):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return format(x, spec)


def markdown(report: dict) -> str:
    """The report as Markdown, one section per stage."""
    lines = [
        "# Device check",
        "",
        f"{report.get('date', '')}: {report['platform']} / {report['device_kind']}, "
        f"jax {report.get('jax_version', '')}, {'--quick, ' if report.get('quick') else ''}"
        f"budget {report.get('budget_s', 0):.0f} s, elapsed {report.get('elapsed_s', 0):.0f} s.",
        "",
    ]

    def head(stage):
        r = report.get(stage, {})
        lines.extend([f"## {stage}", ""])
        if r.get("skipped"):
            lines.extend([r["note"], ""])
            return None
        if "error" in r:
            lines.extend([f"FAILED: `{r['error']}`", ""])
            return None
        if not r:
            lines.extend(["not run", ""])
            return None
        return r

    r = head("correctness")
    if r:
        lines.append(
            f"**{'OK' if r['ok'] else 'FAILED'}** - {r['model']}, batch {r['batch']} x "
            f"{r['tokens']} tokens, range_max {r['range_max']}, max_k {r['max_k']}, "
            f"observables {r.get('observables', 'paper')}, "
            f"matmul precision {r['matmul_precision']}."
        )
        lines.append("")
        for group in ("checks", "informational"):
            for name, c in r.get(group, {}).items():
                lines.append(f"- {name}: {'OK' if c['ok'] else 'FAILED'}")
                if "error" in c:
                    lines.append(f"  - error: `{c['error'][:300]}`")
                for field, f in c.get("fields", {}).items():
                    lines.append(
                        f"  - {field}: {f['statistic']} {_fmt(f['value'], '.2e')} "
                        f"(limit {f['limit']:.0e}){'' if f['ok'] else ' FAILED'}"
                    )
        lines.append("")
    r = head("forward")
    if r:
        lines.append(
            f"{r['model']}, T = {r['tokens']}: largest batch that fits {_fmt(r['batch'])}, "
            f"{_fmt(r['tokens_per_s'], ',.0f')} tokens/s, "
            + (
                f"MFU {r['mfu']:.1%} of {r['peak_tflops']:.0f} TFLOP/s."
                if r.get("mfu") is not None
                else r.get("note", "")
            )
        )
        lines.extend(
            [
                "",
                "| batch | fits | compile s | step s | tokens/s | MFU |",
                "|---|---|---|---|---|---|",
            ]
        )
        for t in r["batch_search"]["tries"]:
            lines.append(
                f"| {t['batch']} | {t['fits']} | {_fmt(t.get('compile_s'))} | "
                f"{_fmt(t.get('step_s'))} | {_fmt(t.get('tokens_per_s'), ',.0f')} | "
                f"{_fmt(t.get('mfu'), '.1%')} |"
            )
        lines.extend(
            ["", f"Search: {r['batch_search']['first_try']}; {r['batch_search']['note']}.", ""]
        )
    r = head("metrics")
    if r:
        shape = " x ".join(str(v) for v in r["shape_per_prompt"])
        lines.extend(
            [
                f"layer_geometry on {shape} per prompt (range_max {r['range_max']}, max_k "
                f"{r['max_k']}, selection {r['selection']}): "
                f"{_fmt(r['seconds_per_prompt'], '.4f')} s per prompt.",
                "",
                "| batch | layer_chunk | compile s | step s | s/prompt | Gram TFLOP/s |",
                "|---|---|---|---|---|---|",
            ]
        )
        for t in r["runs"]:
            lines.append(
                f"| {t['batch']} | {t['layer_chunk']} | {t['compile_s']} | {_fmt(t['step_s'])} | "
                f"{_fmt(t['seconds_per_prompt'], '.4f')} | {_fmt(t['gram_tflops_per_s'])} |"
            )
        lines.extend(["", r.get("note", ""), ""] if r.get("note") else [""])
    r = head("clouds")
    if r:
        lines.extend(
            [
                f"layer_geometry on one layer of {r['points']:,} points x {r['dim']} dims "
                f"(paper set, range_max {r['range_max']}, {r['path']} path): "
                f"{_fmt(r['step_s'])} s (compile {r['compile_s']} s), Gram "
                f"{_fmt(r['gram_tflops_per_s'])} TFLOP/s, peak device memory "
                f"{_fmt((r['peak_bytes'] or 0) / 2**30)} GiB.",
                "",
            ]
        )
    r = head("fused")
    if r:
        lines.extend(["| model | batch | step s | prompts/s |", "|---|---|---|---|"])
        for name, m in r["models"].items():
            if "error" in m:
                lines.append(f"| {name} | FAILED: {m['error'][:200]} | | |")
            else:
                lines.append(
                    f"| {name} | {_fmt(m['batch'])} | {_fmt(m['step_s'])} | "
                    f"{_fmt(m['prompts_per_s'])} |"
                )
        lines.extend(["", r["note"] or "", ""])
    r = head("projection")
    if r:
        lines.extend(
            [
                f"The paper's sweep, {r['prompts']:,} prompts x {r['shuffle_levels']} shuffle "
                f"levels per model, on {r['devices']} device; paper: "
                + " + ".join(f"{v:.0f} min {k}" for k, v in r["paper_minutes_per_model"].items())
                + " per model.",
                "",
                "| model | s/prompt | min (structured) | min (6 levels) | source |",
                "|---|---|---|---|---|",
            ]
        )
        for name, m in r["models"].items():
            lines.append(
                f"| {name} | {_fmt(m['seconds_per_prompt'], '.4f')} | "
                f"{_fmt(m.get('minutes_structured'), '.1f')} | "
                f"{_fmt(m.get('minutes_shuffled'), '.1f')} | {m['source'] or '-'} |"
            )
        lines.extend(
            [
                "",
                f"Total (6 levels, 3 models): {_fmt(r['total_minutes_shuffled'], '.1f')} min on "
                f"one device vs the paper's {r['paper_total_minutes']:.0f} min "
                f"(speed-up {_fmt(r['speedup_vs_paper'], '.1f')}x). {r['note']}",
                "",
            ]
        )
        c = r.get("cheng_protocol") or {}
        if c:
            lines.extend(
                [
                    f"Cheng et al.'s protocol on Llama-3-8B ({c['partitions']} x "
                    f"{c['points_per_partition']:,} points, {c['levels']} levels, "
                    f"{c['layers']} hidden states, windows of {c['window_tokens']} tokens): "
                    f"{_fmt(c.get('total_minutes'), '.1f')} min on one device (geometry "
                    f"{_fmt(c.get('geometry_minutes'), '.1f')} min, forward "
                    f"{_fmt(c.get('forward_minutes'), '.1f')} min). {c.get('note', '')}",
                    "",
                ]
            )
    return "\n".join(lines)


def write_report(output_dir: str, report: dict) -> None:
    """Both report files, each written to a temporary name and renamed."""
    os.makedirs(output_dir, exist_ok=True)
    for name, text in (
        (REPORT_JSON, json.dumps(_jsonable(report), indent=2, allow_nan=False)),
        (REPORT_MD, markdown(report)),
    ):
        path = os.path.join(output_dir, name)
        with open(path + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(path + ".tmp", path)


# --------------------------------------------------------------------------- entry points


def run(
    output_dir: str,
    *,
    quick: bool = False,
    budget_s: float = 420.0,
    peak_tflops: float | None = None,
    max_batch: int = 256,
    seed: int = 0,
    stages=COMPUTE_STAGES,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Runs the selected stages within budget_s, then the projection, and writes
    the two report files; returns the report."""
    unknown = [name for name in stages if name not in COMPUTE_STAGES]
    if unknown:
        raise ValueError(f"stages: unknown {unknown}; choose from {', '.join(COMPUTE_STAGES)}")
    budget = Budget(budget_s, clock)
    s = make_settings(quick, max_batch)
    check = DeviceCheck(s, budget, seed=seed, peak_tflops=peak_tflops, stages=stages)
    accel = check.accel
    report = check.report
    report.update(
        platform=accel.platform,
        device_kind=accel.device_kind,
        devices=jax.device_count(),
        jax_version=jax.__version__,
        flax_version=flax.__version__,
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        quick=quick,
        budget_s=budget_s,
        settings=dataclasses.asdict(s),
    )
    log(
        budget,
        f"jax {jax.__version__} on {accel.platform} ({accel.device_kind}), "
        f"{jax.device_count()} device(s); budget {budget_s:.0f} s{'; --quick' if quick else ''}",
    )

    def update(rep):
        rep["elapsed_s"] = round(budget.elapsed(), 1)
        write_report(output_dir, rep)

    write_report(output_dir, report | {name: {} for name in STAGES})
    for name in COMPUTE_STAGES:
        if name not in stages:
            report[name] = {"skipped": True, "note": "skipped: not among --stages"}
    todo = [(name, s.estimate(name), getattr(check, name)) for name in stages]
    run_stages(todo + [("projection", None, check.projection)], budget, report, update)
    if (
        check.accel.platform != "cpu"
        and check._selection_inputs is not None
        and budget.remaining() > 0
    ):
        name = "selection: host on accelerator vs xla on accelerator"
        log(budget, f"informational: {name}")
        result = check.host_selection_on_accelerator()
        report["correctness"].setdefault("informational", {})[name] = result
        log(budget, f"informational: {'OK' if result['ok'] else 'FAILED'}")
        update(report)
    report["correctness"].setdefault("ok", False)
    update(report)
    return report


def exit_status(report: dict) -> int:
    """1 when a stage raised or a correctness check that ran failed, else 0."""
    if any("error" in report.get(name, {}) for name in STAGES):
        return 1
    c = report.get("correctness", {})
    return 0 if c.get("skipped") or c.get("ok") else 1


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
