"""Host callbacks: run NumPy on the XLA buffers, and pick a host or an XLA backend.

On CPU the data already live in host memory, and a host selection is 10-20x faster
than XLA:CPU's top_k / sort on rows of 1024, so the selection and re-ranking kernels
have a host backend; "auto" picks it on CPU and the XLA one elsewhere via
lax.platform_dependent. The host backend is the compiled kernels of native_kernels.py
where they build (custom calls: the program stays cacheable) and these NumPy
callbacks otherwise.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
from jax import lax

try:
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:  # older or newer jax without it
    _buffer_callback = None

SELECTION_METHODS = ("auto", "host", "xla")

AUTO_HOST_MIN_POINTS = 49
"""Smallest cloud for which "auto" takes the host backend on CPU. Below it XLA's top_k
is as fast (steady state, paper set, AVX2 EPYC: 3-11 ms against 13-16 ms per call at
24-32 points, even at 48, 2.6x slower at 64 and beyond; docs/history.md section 18), and a
step without a host callback is a program JAX's persistent compilation cache can keep, so
another process with the same shapes loads it instead of compiling it again."""


def for_cloud(method: str, n: int) -> str:
    """The backend ``method`` means for clouds of n points: "auto" is "xla" below
    AUTO_HOST_MIN_POINTS (identical results either way), else unchanged."""
    return "xla" if method == "auto" and n < AUTO_HOST_MIN_POINTS else method


_LOW32 = np.uint64(0xFFFFFFFF)


def thread_map(fn, items, threads: int = 0) -> list:
    """[fn(item) for item in items] on ``threads`` host threads (0: one per CPU core).

    The pool belongs to the call: NumPy releases the GIL in the selection's
    partitions and sorts, and starting a few threads (~0.1 ms) is negligible beside
    the work of one callback; nothing stays alive between calls.
    """
    workers = max(1, threads or os.cpu_count() or 1)
    if workers == 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def check_method(method):
    if method not in SELECTION_METHODS:
        raise ValueError(f"selection must be one of {SELECTION_METHODS}, got {method!r}")


def dispatch(method, host, xla, *args):
    if method == "xla":
        return xla(*args)
    if method == "host":
        return host(*args)
    return lax.platform_dependent(*args, cpu=host, default=xla)


def host_call(fn, out_shapes, *args):
    """Run the NumPy function fn(*arrays) -> tuple of arrays on the host.

    Uses jax.experimental.buffer_callback where available: it hands the
    callback the device buffers themselves (zero-copy on CPU), whereas
    jax.pure_callback device_puts a copy of every operand first (~75 ms per
    130 MB here). Falls back to pure_callback otherwise.
    """
    if _buffer_callback is None:
        return jax.pure_callback(fn, out_shapes, *args, vmap_method="broadcast_all")

    def callback(ctx, outs, *buffers):
        del ctx
        results = fn(*(np.asarray(b) for b in buffers))
        for out, result in zip(outs, results):
            np.asarray(out)[...] = result

    return _buffer_callback(callback, out_shapes, vmap_method="broadcast_all")(*args)
