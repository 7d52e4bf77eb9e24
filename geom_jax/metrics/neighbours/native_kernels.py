"""The compiled CPU kernels of metrics/neighbours/native/*.cc, as XLA FFI targets.

The sources are compiled on first use with the system C++ compiler (``CXX``, else
``c++``) against jaxlib's FFI headers (`jax.ffi.include_dir`) into a per-user cache
(``$GEOM_JAX_NATIVE_CACHE``, else ``~/.cache/geom_jax/native``), one library per
source, jaxlib version, compiler flags and CPU, written by an atomic rename so that
concurrent processes never load a partial file. Custom calls to FFI targets are named
in the compiled program, so unlike Python host callbacks they leave it cacheable in
JAX's persistent compilation cache.

Where no compiler works, or ``GEOM_JAX_NATIVE=0``, `available()` is False and the
callers keep their NumPy host-callback path (same results, slower).
"""

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

SOURCES = {"streaming_select": Path(__file__).parent / "native" / "streaming_select.cc"}
TARGETS = {
    "geom_jax_stream_update": ("streaming_select", "GeomJaxStreamUpdate"),
    "geom_jax_stream_finish": ("streaming_select", "GeomJaxStreamFinish"),
    "geom_jax_select_rows": ("streaming_select", "GeomJaxSelectRows"),
    "geom_jax_sort_rows": ("streaming_select", "GeomJaxSortRows"),
}
BASE_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-w")
ARCH_FLAGS = ("-march=native",)

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    root = os.environ.get("GEOM_JAX_NATIVE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "geom_jax" / "native"


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def library_path(name: str, compiler: str, arch: tuple) -> Path:
    h = hashlib.sha256()
    for part in (SOURCES[name].read_bytes(), jaxlib.__version__, compiler, BASE_FLAGS, arch):
        h.update(repr(part).encode() if not isinstance(part, bytes) else part)
    h.update(_cpu_signature().encode())
    return cache_dir() / f"{name}-{h.hexdigest()[:16]}.so"


def build(name: str) -> Path:
    """The compiled library of source ``name``: from the cache, else compiled now."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    errors = []
    for arch in (ARCH_FLAGS, ()):
        path = library_path(name, compiler, arch)
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        cmd = [compiler, *BASE_FLAGS, *arch, "-isystem", jax.ffi.include_dir()]
        cmd += [str(SOURCES[name]), "-o", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            os.replace(tmp, path)
            return path
        os.unlink(tmp)
        errors.append(proc.stderr[-2000:])
    raise RuntimeError("compiling {} failed:\n{}".format(SOURCES[name], "\n".join(errors)))


@functools.cache
def available() -> bool:
    """Whether the FFI targets are registered (built and loaded once per process)."""
    if os.environ.get("GEOM_JAX_NATIVE", "1") == "0":
        return False
    try:
        libs = {name: ctypes.cdll.LoadLibrary(str(build(name))) for name in SOURCES}
        for target, (name, symbol) in TARGETS.items():
            capsule = jax.ffi.pycapsule(getattr(libs[name], symbol))
            jax.ffi.register_ffi_target(target, capsule, platform="cpu")
    except Exception as e:  # noqa: BLE001 -- any failure means the NumPy fallback
        log.warning("geom_jax native CPU kernels unavailable, using NumPy callbacks: %s", e)
        return False
    return True


def for_cpu() -> bool:
    """Whether computations here run on the CPU (jax's default backend) and the kernels
    are available: where a "host" selection means these kernels rather than NumPy's
    callbacks (on a GPU or TPU backend "host" keeps the callbacks, and the kernels are
    never built)."""
    return jax.default_backend() == "cpu" and available()


def capacity(m):
    """Candidates a row's buffer holds before a compaction when the kernels keep the m
    smallest: 2 m, at least m + 64 (the kernels' rule, streaming_select.cc's SelectRow)."""
    return max(2 * m, m + 64)


def row_selection_preferred(n, m) -> bool:
    """Whether the compiled row selection replaces NumPy's for m of n columns per row.

    Where m is a small part of n (8 capacity(m) < n, the kernel's threshold
    streaming) it is the faster one (31 x 1,024 rows, m = 36: 0.084 s against 0.116 s;
    4,096 points: 0.128 against 0.440 s). Where m is a large part of n (GRIDE ranks to
    256 of 1,024 points) NumPy's SIMD partition is faster (0.14 s against 0.20 s for 31
    layers: the paper set at 6.2x DADApy instead of 4.8x under AVX2 code generation), so
    the kernel is taken there only when JAX's persistent compilation cache is on (the
    command lines' default), whose programs a Python callback would keep out of it
    (docs/history.md section 22).
    """
    if not for_cpu():
        return False
    if 8 * capacity(m) < n:
        return True
    return jax.config.jax_compilation_cache_dir is not None


def _require():
    if not available():
        raise RuntimeError("the native CPU kernels are not available (see the log's warning)")


def select_rows(gram, sq, valid_near, valid_rank, row0, *, k_near, ranks):
    """The host selection (selection.host_select_rows' results) as a compiled call.

    gram [..., R, N] rows row0.. of centred Gram matrices, sq / valid_near /
    valid_rank [..., N] -> (near [..., R, k_near], ranked [..., R, #ranks]) int32.
    """
    _require()
    batch, r = gram.shape[:-2], gram.shape[-2]
    out = (
        jax.ShapeDtypeStruct(batch + (r, k_near), jnp.int32),
        jax.ShapeDtypeStruct(batch + (r, len(ranks)), jnp.int32),
    )
    call = jax.ffi.ffi_call("geom_jax_select_rows", out, vmap_method="broadcast_all")
    row0 = jnp.reshape(jnp.asarray(row0, jnp.int32), (1,))
    return call(
        gram,
        sq,
        valid_near,
        valid_rank,
        row0,
        k_near=np.int64(k_near),
        ranks=np.asarray(ranks, np.int64),
    )


def sort_rows(d2, idx, *, k):
    """The first k of each row of (d2 [..., K] float32, idx [..., K] int32) in
    (d2, idx) order: (values, order) [..., k], as refinement's NumPy host sort."""
    _require()
    shape = d2.shape[:-1] + (k,)
    out = (jax.ShapeDtypeStruct(shape, d2.dtype), jax.ShapeDtypeStruct(shape, jnp.int32))
    call = jax.ffi.ffi_call("geom_jax_sort_rows", out, vmap_method="broadcast_all")
    return call(d2, idx.astype(jnp.int32), k=np.int64(k))
