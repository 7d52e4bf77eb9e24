"""Shared pieces of the benchmark scripts: the peer subprocess, agreement, device peak FLOP/s."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_SCRIPT = os.path.join(ROOT, "benchmarks", "peer.py")
# The `make bench-env` environment (DADApy + scikit-learn); GEOM_JAX_BENCH_PYTHON overrides.
PEER_PYTHON = os.environ.get(
    "GEOM_JAX_BENCH_PYTHON", os.path.join(ROOT, ".bench-venv", "bin", "python")
)

# Dense bfloat16 peak of one chip, TFLOP/s (vendor datasheets).
PEAK_TFLOPS = {
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "L4": 121.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
}


def peak_flops(device, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of ``device`` (bf16 datasheet value), or None if unknown."""
    if override_tflops:
        return override_tflops * 1e12
    kind = getattr(device, "device_kind", "").lower()
    for name, tflops in PEAK_TFLOPS.items():
        if name.lower() in kind:
            return tflops * 1e12
    return None


def check_peer_env() -> None:
    """Raises RuntimeError naming `make bench-env` when the peer environment is missing."""
    if not os.access(PEER_PYTHON, os.X_OK):
        raise RuntimeError(
            f"the peer environment is missing ({PEER_PYTHON}); build it with `make bench-env` "
            "(DADApy 0.3.x + scikit-learn), or pass --nopeer"
        )


def run_peer(hidden, *, range_max: int, max_k: int) -> dict:
    """benchmarks/peer.py on hidden [L, N, D] in the peer environment.

    Returns its arrays, "times" (seconds per stage, measured inside the
    subprocess, so its start-up and imports are excluded) and "cpu_s" (its
    process CPU seconds over those stages).
    """
    check_peer_env()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "hidden.npy"), os.path.join(tmp, "peer.npz")
        np.save(src, np.asarray(hidden, np.float32))
        proc = subprocess.run(
            [PEER_PYTHON, PEER_SCRIPT, src, out, f"--range_max={range_max}", f"--max_k={max_k}"],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "JAX_"))},
        )
        if proc.returncode:
            raise RuntimeError(f"benchmarks/peer.py failed:\n{proc.stderr[-4000:]}")
        with np.load(out) as f:
            got = {k: f[k] for k in f.files}
    got["times"] = json.loads(str(got["times"]))
    got["cpu_s"] = float(got["cpu_s"])
    return got


def deviations(got, ref) -> dict:
    """Largest deviations of metric arrays ``got`` from ``ref`` (dicts or LayerGeometry)."""

    def arr(x, k):
        return np.asarray(x[k] if isinstance(x, dict) else getattr(x, k), np.float64)

    def rel(k):
        a, b = arr(got, k), arr(ref, k)
        ok = np.isfinite(b)
        return float(np.max(np.abs(a[ok] - b[ok]) / np.abs(b[ok]))) if ok.any() else 0.0

    def diff(k):
        return np.abs(arr(got, k) - arr(ref, k))

    return {
        "gride_ids (rel)": rel("gride_ids"),
        "gride_errs (rel)": rel("gride_errs"),
        "gride_scales (rel)": rel("gride_scales"),
        "twonn (rel)": rel("twonn"),
        "cos_mean (abs)": float(np.max(diff("cos_mean"))),
        "cos_std (abs)": float(np.max(diff("cos_std"))),
        "overlap (max abs)": float(np.max(diff("overlap"))),
        "overlap (mean abs)": float(np.mean(diff("overlap"))),
    }


# NumPy's unstable argsort of float32 distances may flip a near-tied neighbour
# (one token at k = 1 is 1/N), so overlap is judged on its mean deviation.
LIMITS = {
    "gride_ids (rel)": 1e-3,
    "gride_errs (rel)": 1e-2,
    "gride_scales (rel)": 1e-3,
    "twonn (rel)": 1e-3,
    "cos_mean (abs)": 1e-5,
    "cos_std (abs)": 1e-5,
    "overlap (max abs)": 5e-2,
    "overlap (mean abs)": 1e-3,
}


def within_limits(dev: dict) -> bool:
    return all(dev[k] <= LIMITS[k] for k in dev)


def child(python, script, src, out, args, env=None) -> dict:
    """Runs ``python script src out *args`` (a side of a benchmark, in its own process so
    that its peak RSS is its own) and returns the arrays it saved to ``out``."""
    proc = subprocess.run(
        [python, script, src, out, *args], capture_output=True, text=True, env=env
    )
    if proc.returncode:
        raise RuntimeError(f"{os.path.basename(script)} failed:\n{proc.stderr[-4000:]}")
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def gib(n_bytes) -> float:
    return float(n_bytes) / 2**30


def load_avg() -> str:
    return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def timed_runs(run, repeats: int):
    """(result, first_s, runs [s], cpu_s): ``run()`` once to compile (first_s: compilation
    and the first run), then ``repeats`` timed runs and their process CPU seconds."""
    t = time.perf_counter()
    result = run()
    first = time.perf_counter() - t
    runs, cpu = [], time.process_time()
    for _ in range(repeats):
        t = time.perf_counter()
        result = run()
        runs.append(time.perf_counter() - t)
    return result, first, runs, time.process_time() - cpu
