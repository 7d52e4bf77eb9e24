"""The stages of the check, each a method of DeviceCheck."""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import benchmarking
from benchmarks.device_check.budget import Budget, log
from benchmarks.device_check.measure import (
    as_dict,
    compare,
    deviation,
    find_batch,
    predict_batch,
    synthetic_stack,
    time_runs,
    token_ids,
)
from benchmarks.device_check.settings import (
    COMPUTE_STAGES,
    PAPER_MINUTES,
    PAPER_MODELS,
    PAPER_PROMPTS,
    PAPER_SHUFFLE_LEVELS,
    STAGES,
    Settings,
    model_config,
    observable_options,
)
from geom_jax import metrics, models, pipeline, sharding


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
        compile_s, step, blocked = self._cloud_geometry(x, neighbour_path="blocked")
        stats = self.accel.memory_stats() if hasattr(self.accel, "memory_stats") else None
        peak = (stats or {}).get("peak_bytes_in_use")
        self.log(f"clouds: {n} x {d}, one layer: {step:.3f} s")
        ring = self.ring(x, blocked)
        del x
        return {
            "ring": ring,
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

    def _cloud_geometry(self, x, **path) -> tuple[float, float, dict]:
        """layer_geometry of the clouds stage's cloud x (range_max cloud_range_max, max_k)
        on one neighbour path, compiled ahead: (compile seconds, median step seconds,
        the last timed run's result)."""
        s = self.s
        fn = jax.jit(
            functools.partial(
                metrics.layer_geometry, range_max=s.cloud_range_max, max_k=s.max_k, **path
            )
        )
        t = time.perf_counter()
        compiled = fn.lower(x).compile()
        compile_s = time.perf_counter() - t
        last = {}

        def run():
            last["out"] = compiled(x)
            return last["out"]

        step, _ = time_runs(run, s.repeats)
        return compile_s, step, last["out"]

    def ring(self, x, blocked) -> dict:
        """The same cloud with its points split over every device of the accelerator's
        kind (neighbour_path="ring": blocks passed around a ring of lax.ppermute steps;
        one device is a ring of one): time, and its agreement with the blocked path
        (GRIDE's largest relative deviation, the overlaps equal)."""
        devices = [dev for dev in jax.devices() if dev.platform == self.accel.platform]
        mesh = sharding.make_mesh((len(devices), 1), devices)
        compile_s, step, got = self._cloud_geometry(x, neighbour_path="ring", mesh=mesh)
        got, want = jax.device_get(got), jax.device_get(blocked)
        self.log(f"clouds: ring of {len(devices)} device(s): {step:.3f} s")
        return {
            "devices": len(devices),
            "compile_s": round(compile_s, 2),
            "step_s": step,
            "gride_ids_rel": deviation(got["gride_ids"], want["gride_ids"], "max_rel"),
            "overlap_equal": bool(np.array_equal(got["overlap"], want["overlap"])),
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
