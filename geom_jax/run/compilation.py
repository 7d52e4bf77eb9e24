"""JAX's persistent compilation cache for geom-jax's runs, and a clock of compile time.

A run's jitted steps (the model's forward, the metrics' chunks) are the same programs
from one process to the next when the shapes are; with the cache on, a second process
loads them instead of compiling them (the neighbour selection's CPU kernels are XLA
FFI custom calls, metrics/neighbours/native_kernels.py, so the programs hold no Python
callback and are cacheable). ``JAX_COMPILATION_CACHE_DIR``, when set, wins over the
run's ``compilation_cache``.

`CompileClock` sums what jax reports through `jax.monitoring` while a run lasts:
tracing, lowering to StableHLO, and the backend's compile (which includes loading an
executable from the cache) with the cache's hits and misses.
"""

from __future__ import annotations

import os
import threading

import jax
from absl import logging
from jax import monitoring

DEFAULT_DIR = "~/.cache/geom_jax/xla"
"""The runs' default ``compilation_cache`` (`enable` expands the ~)."""
MIN_COMPILE_SECS = 0.1
"""Programs compiling faster than this are not written to the cache (jax's default is 1 s:
most of a run's dozens of small programs would then compile again in every process)."""
MAX_BYTES = 4 << 30

_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}
_COUNTS = {
    "/jax/compilation_cache/cache_hits": "hits",
    "/jax/compilation_cache/cache_misses": "misses",
}


def enable(path: str | None) -> str | None:
    """Turns the persistent cache on at ``path`` ('' or None: leave jax's setting);
    returns the folder in use (None when off). Call before the first compilation (and,
    in a multi-process run, after ``jax.distributed`` is up).

    Each process of a multi-process run keeps its own subfolder
    (``process-<i>-of-<n>``): jax keys a program by its computation and devices, not by
    the process, so processes sharing one folder load each other's executables, and on
    CPU a process running another's executable sends collectives of the wrong sizes
    (gloo aborts: "Received data size doesn't match expected size"). On CPU a
    multi-process run leaves the cache off: even with a folder per process, a pooled run
    of two gloo processes that loaded their own executables aborted the same way in its
    cloud geometry (history 25)."""
    current = jax.config.jax_compilation_cache_dir
    if current is None and path and jax.process_count() > 1 and jax.default_backend() == "cpu":
        logging.info(
            "compilation cache off: %d CPU processes (see compilation.enable)", jax.process_count()
        )
        return None
    if current is None and path:
        path = os.path.expanduser(path)
        if jax.process_count() > 1:
            path = os.path.join(path, f"process-{jax.process_index()}-of-{jax.process_count()}")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            logging.warning("compilation cache off: cannot create %s (%s)", path, e)
            return None
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
        current = path
    return current


class CompileClock:
    """Seconds of tracing, lowering and backend compilation, and cache hits and misses,
    reported by jax since `start` (one clock per process; listeners stay registered)."""

    _lock = threading.Lock()
    _totals: dict[str, float] = {}
    _registered = False

    @classmethod
    def _on_duration(cls, event, duration, **kwargs):
        name = _EVENTS.get(event)
        if name:
            with cls._lock:
                cls._totals[name] = cls._totals.get(name, 0.0) + float(duration)
                if name == "compile":
                    cls._totals["programs"] = cls._totals.get("programs", 0) + 1

    @classmethod
    def _on_event(cls, event, **kwargs):
        name = _COUNTS.get(event)
        if name:
            with cls._lock:
                cls._totals[name] = cls._totals.get(name, 0) + 1

    def __init__(self):
        cls = type(self)
        with cls._lock:
            if not cls._registered:
                monitoring.register_event_duration_secs_listener(cls._on_duration)
                monitoring.register_event_listener(cls._on_event)
                cls._registered = True
            self._start = dict(cls._totals)

    def totals(self) -> dict[str, float]:
        """{trace, lower, compile (seconds), programs, hits, misses} since the clock began."""
        with self._lock:
            now = dict(self._totals)
        keys = ("trace", "lower", "compile", "programs", "hits", "misses")
        return {k: now.get(k, 0) - self._start.get(k, 0) for k in keys}

    def summary(self) -> str:
        t = self.totals()
        cache = jax.config.jax_compilation_cache_dir
        where = (
            f"{int(t['hits'])} loaded from the persistent cache at {cache}"
            if cache
            else "persistent cache off"
        )
        return (
            f"compilation: XLA {t['compile']:.2f} s for {int(t['programs'])} programs ({where}); "
            f"tracing {t['trace']:.2f} s, lowering {t['lower']:.2f} s"
        )
