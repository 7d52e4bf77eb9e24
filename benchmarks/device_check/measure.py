"""Comparisons of two results, timing, the largest batch that fits, synthetic inputs."""

from __future__ import annotations

import dataclasses
import functools
import gc
import math
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.device_check.settings import DEFAULT_TOLERANCE, TOLERANCES


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
