"""Shared test configuration: float32 everywhere, CPU only; the tiny model fixture."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's code generation: XLA:CPU with LLVM at -O0, which compiles a third
# faster than the default -O3 (compilation is most of the suite's time) and differs
# from it only in the last bits of float32 reductions, as another instruction set
# does. XLA's default code generation is checked where it matters, in
# test_metrics_isa.py's subprocesses: every instruction set at the default level,
# against the goldens, bit for bit where a claim is (chunks change nothing).
# XLA_FLAGS naming a level (e.g. =3, XLA's default) runs the suite at that level.
OPT_FLAG = "--xla_backend_optimization_level"
if OPT_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {OPT_FLAG}=0".strip()
# One XLA compilation cache for the run, shared through the environment by the
# xdist workers and the command-line subprocesses (they compile the same steps);
# a size limit turns on jax's file lock, so no worker reads a half-written entry.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="geom-jax-test-xla-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import pytest  # noqa: E402
from tiny_model import write_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama checkpoint folder with SmolLM2's tokenizer (tiny_model.py)."""
    return write_tiny_llama(str(tmp_path_factory.mktemp("tiny") / "tiny-llama"))
