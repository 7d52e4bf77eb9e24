"""Shared test configuration: float32 everywhere, CPU only; the tiny model fixture."""

import atexit
import os
import shutil
import tempfile

from helpers import subprocess_env

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's code generation (subprocess_env.SUITE_CODEGEN): LLVM at -O0 and
# XLA:CPU's loop emitters, which compile 2-3x faster than XLA's defaults
# (compilation is most of the suite's time) and differ from them only in the last
# bits of float32 reductions, as another instruction set does. XLA's default code
# generation is checked where it matters, in test_metrics_isa.py's subprocesses:
# every instruction set at the defaults, against the goldens, bit for bit where a
# claim is (chunks change nothing). XLA_FLAGS naming either flag (e.g.
# --xla_backend_optimization_level=3) leave the code generation to them.
if not subprocess_env.codegen_named():
    os.environ["XLA_FLAGS"] = subprocess_env.xla_flags(*subprocess_env.SUITE_CODEGEN)
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
from helpers.tiny_model import write_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama checkpoint folder with SmolLM2's tokenizer (tiny_model.py)."""
    return write_tiny_llama(str(tmp_path_factory.mktemp("tiny") / "tiny-llama"))
